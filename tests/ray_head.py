"""A local `ray start --head` for tests that submit jobs: its own ports and temp dir, stopped by its own pids.

Other Ray instances run on the same machine, so nothing here uses a default port or `ray stop`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tests.conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")
# Every port a head opens besides the GCS port and the dashboard's.
PORT_FLAGS = [
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
]


def worker_ports_of_this_process() -> tuple[tuple[int, int], tuple[int, int]]:
    """The worker ports (first, last) of a head and of a second node started by this test process.

    Ports 20000-29999 (below Linux's ephemeral range, apart from the 10002-19999 of an embedded Ray) are
    split between pytest-xdist's workers (`make test` runs two, and each may start a node while the other
    does), and each share between a head and a node joining it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    half = 10000 // workers // 2
    first = 20000 + index * 2 * half
    return (first, first + half - 1), (first + half, first + 2 * half - 1)


def node_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes of one node only: their command lines name its temp dir."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@dataclasses.dataclass(frozen=True)
class Head:
    """A started head: its GCS address (``ray.init(address=...)``) and dashboard URL (job submission)."""

    address: str
    dashboard: str | None


@contextlib.contextmanager
def local_head(
    temp_dir: Path,
    env: dict[str, str],
    cwd: Path | None = None,
    num_cpus: int = 2,
    num_gpus: int = 0,
    dashboard: bool = True,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Head]:
    """Start a head with ``env`` (its workers and job drivers inherit it) in ``cwd``, on loopback, every port
    its own (other Ray instances on this machine hold the defaults); stop it by its own process ids."""
    ports = {}

    def command() -> list[str]:
        ports.update(gcs=free_port(), dashboard=free_port())
        args = [RAY, "start", "--head", "--num-cpus", str(num_cpus), "--disable-usage-stats"]
        args += ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--port", str(ports["gcs"])]
        if num_gpus:
            args += ["--num-gpus", str(num_gpus)]
        if dashboard:
            args += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
            args += ["--dashboard-port", str(ports["dashboard"])]
        else:
            args += ["--include-dashboard", "false"]
        for flag in PORT_FLAGS:
            args += [flag, str(free_port())]
        first, last = worker_ports_of_this_process()[0]
        args += ["--min-worker-port", str(first), "--max-worker-port", str(last)]
        return args + list(extra_args)

    try:
        start_node(command, temp_dir, env, cwd)
        dashboard_url = f"http://127.0.0.1:{ports['dashboard']}" if dashboard else None
        yield Head(f"127.0.0.1:{ports['gcs']}", dashboard_url)
    finally:
        stop_processes(str(temp_dir))


@contextlib.contextmanager
def worker_node(
    temp_dir: Path, env: dict[str, str], address: str, num_cpus: int = 1, own_disk: Path | None = None
) -> Iterator[None]:
    """A second node joining the head at ``address``, on loopback with its own ports and temp dir.
    ``own_disk``: a folder the node does not share with this machine: in a mount namespace of its own
    (the node's processes only), an empty tmpfs lies over it, as a node's local disk would be."""

    def command() -> list[str]:
        args = [RAY, "start", "--address", address, "--num-cpus", str(num_cpus), "--disable-usage-stats"]
        args += ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir)]
        for flag in PORT_FLAGS:
            if flag != "--ray-client-server-port":  # a head's only
                args += [flag, str(free_port())]
        first, last = worker_ports_of_this_process()[1]
        args += ["--min-worker-port", str(first), "--max-worker-port", str(last)]
        if own_disk is None:
            return args
        mounted = f"mount -t tmpfs tmpfs {shlex.quote(str(own_disk))} && exec {shlex.join(args)}"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounted]

    try:
        start_node(command, temp_dir, env)
        yield
    finally:
        stop_processes(str(temp_dir))


def start_node(command: Callable[[], list[str]], temp_dir: Path, env: dict[str, str], cwd: Path | None = None) -> None:
    """``ray start`` with ``command()``'s arguments, once more with fresh ports if the first start fails.

    A port that ``free_port`` found free can be taken by another process before the node binds it, and a
    node whose raylet does not register within Ray's 30 s ends its start with "timed out during startup"
    (seen once in a full run of the suite); either way the node's processes are stopped and it starts
    again. A second failure fails the test with both outputs."""
    failures = []
    for _ in range(2):
        started = subprocess.run(command(), env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
        if started.returncode == 0:
            return
        failures.append(started.stdout[-2000:] + started.stderr[-3000:])
        stop_processes(str(temp_dir))
    raise AssertionError("`ray start` failed twice:\n" + "\n---\n".join(failures))


def stop_processes(temp_dir: str) -> None:
    """SIGTERM, then SIGKILL after 3 s, every process of the head started in ``temp_dir``. The raylet and
    the workers exit on SIGTERM within a second; the GCS server alone waits out its own graceful
    shutdown (15 s and more once its raylet is gone), which a test head has no use for."""
    procs = node_processes(temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


def submit_when_ready(
    command: list[str], env: dict[str, str], timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """Run a `ray job ...` command, retrying while the head's job agent is still starting."""
    deadline = time.time() + 90
    while True:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
        # Right after `ray start` the job agent may not be up yet; the server says so.
        if "No available agent" not in done.stdout + done.stderr or time.time() > deadline:
            return done
        time.sleep(2)
