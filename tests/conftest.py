"""Shared fixtures: a real local Ray, a real S3 endpoint (moto server), real audio."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

# Credentials come from the environment only; moto accepts any. Set before Ray
# starts so its workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# The test files that take longest, longest first (a full run's `--durations=0`, summed per file, 2026-12-05).
# `make test` hands whole files to its two pytest-xdist workers in collection order; one of these started
# last would leave a single worker running it after the other had finished.
LONGEST_FILES = (
    "test_unattended.py",
    "test_console.py",
    "test_gpu_topology.py",
    "test_augment_job.py",
    "test_driver_imports.py",
    "test_multinode.py",
    "test_unattended_jobs.py",
    "test_deploy_entrypoints.py",
    "test_install.py",
    "test_interop.py",
    "test_output_store.py",
    "test_job_submit.py",
    "test_encode_resume.py",
)


def pytest_collection_modifyitems(items):
    """Tests that decode pages (the ``small_tensor_pages`` fixture) carry the ``pages`` mark: `make test` runs
    them in a pytest process of their own, apart from the processes that hold a Ray (Makefile). The files of
    ``LONGEST_FILES`` go first, in its order; the others follow in theirs (a stable sort)."""
    for item in items:
        if "small_tensor_pages" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pages)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Forks of this process made while it drives Ray. Ray advises against forking a driver (its docs: DataLoader
# workers by forkserver or spawn), and every hang or sudden exit of this suite's pytest process came after a
# DataLoader forked its workers from it: its GCS subscription stopped answering, or it exited with 1 mid-run.
FORKS_UNDER_RAY: list[str] = []


def note_fork_under_ray() -> None:
    """Runs before every ``os.fork`` of this process (``os.register_at_fork``); fork+exec by ``subprocess``
    starts a fresh program and is left alone."""
    ray = sys.modules.get("ray")
    caller = sys._getframe(1).f_code.co_filename
    if ray is not None and ray.is_initialized() and not caller.endswith("subprocess.py"):
        FORKS_UNDER_RAY.append(caller)


os.register_at_fork(before=note_fork_under_ray)


@pytest.fixture(autouse=True)
def no_fork_under_ray():
    """Fails the test that forked this process while it drove Ray (see ``FORKS_UNDER_RAY``)."""
    yield
    forks, FORKS_UNDER_RAY[:] = list(FORKS_UNDER_RAY), []
    if forks:
        pytest.fail(f"forked while this process drives Ray (from {forks[0]}): use forkserver or spawn")


@pytest.fixture(autouse=True)
def root_logging_kept():
    """The root logger's handlers as they were before each test: one that runs the CLI in-process
    (console.configure_logging: basicConfig(force=True)) left a handler on its captured stderr, closed
    after it, and a later test's warnings wrote "--- Logging error ---" into that test's stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (2 CPUs, like the CI machine; one in each of `make test`'s
    pytest-xdist workers). From here on this process's multiprocessing (DataLoader workers included) starts
    workers by forkserver, never by fork."""
    import ray

    if not ray.is_initialized():
        # No idle workers kept: the jobs' actors never take one (Ray starts each actor in a process of its own),
        # and the two Ray keeps by default, with the raylet tending them, cost an embedded Ray that lives the
        # whole session 2.4 of its 3.3 CPU-seconds a minute (docs/benchmarks.md, the test suite's time).
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _system_config={"num_workers_soft_limit": 0},
        )
    multiprocessing.set_start_method("forkserver", force=True)
    yield ray
    stop_embedded_ray(ray)


@pytest.fixture
def on_session_ray(ray_local) -> dict[str, str]:
    """Environment variables that put a CLI subprocess on this process's Ray (``ray_local``), a driver of its
    own, instead of on an embedded Ray it starts and stops: an embedded Ray costs about 7 CPU-seconds more a run
    (seven processes of Ray's and Ray Data's three actors; docs/benchmarks.md, the test suite's time). For
    tests whose subject is the run, not the embedded Ray (tests/test_console.py keeps it for the runs whose
    stop or start involves Ray's processes), and whose CLI run never waits on an in-process run for the
    session's two CPUs (then neither could go on). A test that ends such a run calls
    :func:`wait_for_other_drivers_actors` before the next one."""
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}


def wait_for_other_drivers_actors(timeout_s: float = 60) -> None:
    """Return once every actor of the session's other drivers (CLI runs :func:`on_session_ray` put there)
    has ended, its process gone too: Ray ends a dead driver's actors soon after the driver, not at once,
    and marks one dead before its process is: one still running could write after the test goes on.
    Detached actors are left out (Ray Data's per-cluster actors, made by whichever driver ran a dataset
    first, live as long as the cluster)."""
    import time

    import ray
    import ray._private.state

    own = ray.get_runtime_context().get_job_id()
    deadline = time.time() + timeout_s
    while True:
        others = [a for a in ray._private.state.actors().values() if a["JobID"] != own and not a["IsDetached"]]
        left = [a for a in others if a["State"] != "DEAD" or _process_of(a) is not None]
        if not left:
            return
        assert time.time() < deadline, f"actors of another driver still running after {timeout_s} s: {left}"
        time.sleep(0.2)


def _process_of(actor: dict):
    """The actor's process while it runs (not a later process given its pid), else None."""
    import psutil

    if not actor.get("Pid"):  # never started
        return None
    try:
        proc = psutil.Process(actor["Pid"])
        if proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() * 1000 > actor["StartTime"] + 1000:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def stop_embedded_ray(ray) -> None:
    """``ray.shutdown()``, then the session's Ray processes that outlive it killed by their ids: a worker
    caught in Ray's exit as its raylet went (seen once in a CI run: an actor's main thread waiting on a
    lock in the core worker forever, 1 GB held) is otherwise left running with no parent."""
    import psutil

    ours = [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]
    ray.shutdown()
    _, alive = psutil.wait_procs(ours, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=15)


def _is_ray_process(proc) -> bool:
    import psutil

    try:
        name = proc.name()  # a worker's and an agent's is its title (ray::MapWorker(...), ray::IDLE)
    except psutil.Error:
        return False
    return name.startswith("ray::") or name in ("raylet", "gcs_server")


@pytest.fixture(scope="session")
def short_tmp():
    """Makes temp dirs directly under the system's temp dir, removed at the end of the session: Ray's unix
    socket paths under a head's temp dir must stay within 107 bytes, which pytest's own temp paths
    do not leave room for."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"rp-{name}-")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


class Lines(logging.Handler):
    """The messages a logger gives while attached (pytest runs with ``-p no:logging``: no caplog)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def http_server(handler: type = None):
    """A threaded HTTP/1 server on loopback answering with ``handler`` (by default 501 to every method);
    yields its ``host:port``."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler or http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's ThreadedMotoServer), stopped at the end."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@contextlib.contextmanager
def credential_checking_moto(free_requests: int):
    """A moto server in a process of its own that checks credentials once its first ``free_requests``
    requests are answered (moto's INITIAL_NO_AUTH_ACTION_COUNT); yields its endpoint URL."""
    import subprocess
    import time

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", f"from moto.server import main; main(['-H', '127.0.0.1', '-p', '{port}'])"],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(free_requests)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def credential_checking_s3_endpoint():
    """A second moto server, in a process of its own, that checks credentials: the tests' keys exist in no
    account, so every request is refused as with a wrong key id."""
    with credential_checking_moto(0) as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; returns (bucket name, storage_options, s3fs filesystem)."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(name)
    yield name, options, fs
    fs.rm(name, recursive=True)


@pytest.fixture
def small_tensor_pages(monkeypatch):
    """The readers decode even the tests' small tensor rows from their Parquet pages (readers/pages.py),
    the path real outputs take (rows of at least pages.MIN_ROW_BYTES)."""
    import ray_pipelines.readers.pages as pages

    monkeypatch.setattr(pages, "MIN_ROW_BYTES", 0)
