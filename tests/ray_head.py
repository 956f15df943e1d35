"""A local `ray start --head` for tests that submit jobs: its own ports and temp dir, stopped by its own pids.

Other Ray instances run on the same machine, so nothing here uses a default port or `ray stop`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")


def _head_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes of this head only: their command lines name its temp dir."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@contextlib.contextmanager
def local_head(temp_dir: Path, env: dict[str, str], cwd: Path | None = None, num_cpus: int = 2) -> Iterator[str]:
    """Start a head with ``env`` (its workers and job drivers inherit it) in ``cwd``; yield the dashboard URL."""
    dashboard = free_port()
    started = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--num-cpus",
            str(num_cpus),
            "--disable-usage-stats",
            "--port",
            str(free_port()),
            "--dashboard-port",
            str(dashboard),
            "--dashboard-host",
            "127.0.0.1",
            "--temp-dir",
            str(temp_dir),
            "--include-dashboard",
            "true",
            # Every other port free too: other Ray instances on this machine hold the defaults.
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--node-manager-port",
            str(free_port()),
            "--object-manager-port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
            "--min-worker-port",
            "20000",
            "--max-worker-port",
            "29999",
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stderr
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        procs = _head_processes(str(temp_dir))
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


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
