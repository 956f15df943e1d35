"""A named cluster that does not answer: a prompt exit 1 that says what to check, not minutes at 0 %."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from ray_pipelines.engine.runtime import cluster_endpoint, gcs_problem, ray_starting, wait_for_cluster
from tests.audio_helpers import REPO, tone, write_audio
from tests.conftest import http_server


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_addresses_name_a_host_and_port_or_are_left_to_ray():
    assert cluster_endpoint("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert cluster_endpoint("[::1]:6379") == ("::1", 6379)
    assert cluster_endpoint("ray://head-svc:10001") == ("head-svc", 10001)
    for left_to_ray in ("auto", "local", "head-svc", "head-svc:port"):
        assert cluster_endpoint(left_to_ray) is None


def test_waiting_for_a_cluster_returns_once_it_listens_and_names_the_address_when_it_never_does():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        wait_for_cluster(f"127.0.0.1:{listening.getsockname()[1]}", 5.0)
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"no Ray cluster answers at 127.0.0.1:{port} \(Connection refused"):
        wait_for_cluster(f"127.0.0.1:{port}", 1.0)
    assert time.monotonic() - started < 10  # the timeout, not ray.init's minutes of retries
    wait_for_cluster("auto", 0.0)  # Ray finds (or refuses) these itself


def job_at(
    address: str, tmp_path, env: dict[str, str], timeout: float = 120, quiet: bool = True
) -> subprocess.CompletedProcess:
    """The augment CLI over one clip in ``tmp_path/in`` (written here), to ``tmp_path/out``, at ``address``: a
    process of its own (a test process may hold a Ray session, which the job would use instead)."""
    write_audio(tmp_path / "in" / "a.wav", tone(1.0))
    return subprocess.run(
        [sys.executable, "-m", "ray_pipelines.cli", "augment", "--config", "augment", *(["--quiet"] if quiet else [])]
        + ["--set", f"input={tmp_path / 'in'}", "--set", f"output={tmp_path / 'out'}", "--address", address],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_job_given_an_address_nothing_answers_exits_1_and_leaves_no_lease(tmp_path):
    out, port = tmp_path / "out", closed_port()
    done = job_at(f"127.0.0.1:{port}", tmp_path, {**os.environ, "RAY_PIPELINES_CONNECT_TIMEOUT_S": "1"}, quiet=False)
    assert done.returncode == 1, done.stderr
    said = done.stdout + done.stderr  # the progress's end line: nothing ran, no one stopped it
    assert "augment: failed, 0/1 inputs" in said and "augment: stopped" not in said, said
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"ray-pipelines augment: the job could not run: ConnectionError: no Ray cluster answers at 127.0.0.1:{port}"
    )
    assert last.endswith("leave both unset to run on an embedded local Ray")
    assert not (out / "_lease.json").exists() and not (out / "_SUCCESS").exists()
    assert not (out / "manifest.json").exists()


def test_a_cluster_that_refuses_the_drivers_token_is_named_with_what_to_set(tmp_path, ray_local):
    """Ray 2.60's `ray start` turns token auth on, and Ray sends a token to an address it is given only
    with RAY_AUTH_MODE=token. Before: Ray's retry warning every second for 20 s, then `ConnectionError:
    Failed to connect to Ray cluster at ...` and nothing about tokens. The cluster here is the test session's
    Ray (token auth on, as a `ray start` head's: tests/conftest.py, ``on_session_ray``)."""
    out = tmp_path / "out"
    driver_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    driver_env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's own retries: 2 s, not 20

    def job(address: str, **env: str) -> subprocess.CompletedProcess:
        return job_at(address, tmp_path, {**driver_env, **env}, timeout=180)

    address = ray_local.get_runtime_context().gcs_address
    unasked = job(address)
    wrong = job(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32)
    assert unasked.returncode == 1, unasked.stderr
    assert unasked.stderr.strip().splitlines()[-1] == (
        f"ray-pipelines augment: the job could not run: ConnectionError: the Ray cluster at {address} wants an "
        "auth token (token auth is on by default since Ray 2.60), and Ray sends one to an address it is given only "
        "with RAY_AUTH_MODE=token: export RAY_AUTH_MODE=token, with the cluster's token in RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
    )
    assert "InvalidAuthToken" not in unasked.stderr  # Ray's retry warnings: the last line says it all
    assert wrong.returncode == 1 and "InvalidAuthToken" not in wrong.stderr, wrong.stderr
    assert (
        wrong.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"ConnectionError: the Ray cluster at {address} refused this driver's auth token: put the cluster's "
            "token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
            "(`ray get-auth-token` on the head prints it)"
        )
    )
    assert not (out / "_lease.json").exists() and not (out / "_SUCCESS").exists()


def test_an_address_that_is_not_a_ray_gcs_is_named_at_once(tmp_path, monkeypatch):
    """Before: `ray.init` asked such an address for its cluster id 20 times, 30 s each, the job at 0 %
    for 13 minutes (the dashboard's port, Ray Client's, another service). The probe goes straight to the
    address, as Ray does, whatever proxy the environment names."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    grpc_service = grpc.server(ThreadPoolExecutor(1))  # a gRPC server without Ray's services (Ray Client's)
    grpc_port = grpc_service.add_insecure_port("127.0.0.1:0")
    grpc_service.start()
    try:
        started = time.monotonic()
        assert gcs_problem(f"127.0.0.1:{grpc_port}", 5.0) == (
            f"127.0.0.1:{grpc_port} is a gRPC service but not a Ray cluster's GCS (Ray Client's port, 10001, is "
            "ray://HOST:10001): give the head's GCS address (host:6379 by default)"
        )
        assert time.monotonic() - started < 5  # an answer, not the timeout
    finally:
        grpc_service.stop(None)
    assert gcs_problem("ray://127.0.0.1:1", 1.0) == gcs_problem("auto", 1.0) == ""  # left to Ray

    with http_server() as address:
        done = job_at(address, tmp_path, {**os.environ, "RAY_PIPELINES_CONNECT_TIMEOUT_S": "2"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"ray-pipelines augment: the job could not run: ConnectionError: something answers at {address}, but not "
        "a Ray cluster: it does not speak gRPC (the dashboard's port, 8265, is for `ray job submit --address "
        "http://HOST:8265`): give the head's GCS address (host:6379 by default)"
    )
    assert not (tmp_path / "out" / "_lease.json").exists()
    # RAY_ADDRESS=http://...:8265 (what a shell set up for `ray job submit` holds): Ray's own error, cut to
    # its first line, ended on "To fix this, either:".
    with http_server() as address:
        done = job_at(f"http://{address}", tmp_path, dict(os.environ))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"ray-pipelines augment: the job could not run: ConnectionError: http://{address} (--address or "
        "RAY_ADDRESS) is an HTTP address, the dashboard's, which `ray job submit --address` takes; a job run here "
        "needs the head's GCS address (host:6379 by default) or ray://HOST:10001 (Ray Client), or neither set for "
        "an embedded local Ray"
    )


def test_ray_starting_keeps_rays_stop_handlers_out_of_the_driver_and_puts_rays_settings_back():
    """While ray.init runs in the driver: no SIGTERM handler of Ray's (ray.init's sys.exit(15)) and no C++
    crash handler (it took SIGTERM and aborted); afterwards Ray's settings as they were, and a caller
    without a SIGTERM handler left with what ray.init would have set (an exit that unwinds)."""
    import ray._private.ray_constants as constants
    import ray._private.utils as utils

    before = constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER, utils.set_sigterm_handler
    caller = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with ray_starting():
            assert constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER is True
            rays = lambda signum, frame: None  # noqa: E731
            utils.set_sigterm_handler(rays)  # what ray.init does: kept out
            assert signal.getsignal(signal.SIGTERM) not in (rays, signal.SIG_DFL, signal.SIG_IGN)
        assert (constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER, utils.set_sigterm_handler) == before
        with pytest.raises(SystemExit) as exited:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert exited.value.code == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, caller)
