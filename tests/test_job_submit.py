"""`ray job submit` against a local `ray start --head` this test starts (and stops) itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.audio_helpers import REPO, tone, write_audio
from tests.conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")


def _head_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes of this test's head only: their command lines name its temp dir."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture
def ray_head(tmp_path_factory):
    temp_dir = str(tmp_path_factory.mktemp("rayhead"))
    port, dashboard = free_port(), free_port()
    # As after `source .venv/bin/activate`: the job's `python` is the project's.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    started = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--disable-usage-stats",
            "--port",
            str(port),
            "--dashboard-port",
            str(dashboard),
            "--dashboard-host",
            "127.0.0.1",
            "--temp-dir",
            temp_dir,
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
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        procs = _head_processes(temp_dir)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            proc.kill()


def test_ray_job_submit_runs_the_augment_job(ray_head, tmp_path):
    address, env = ray_head
    audio = tmp_path / "audio"
    for i in range(2):
        write_audio(audio / f"clip{i}.wav", tone(1.0, freq=300.0 + 100 * i))
    out = tmp_path / "out"
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "jobs.augment",
        "--no-progress",
        "--config",
        "jobs/configs/augment.yaml",
        "--set",
        f"input={audio}",
        "--set",
        f"output={out}",
        "--set",
        "num_versions=1",
        "--set",
        "duration=1.0",
        "--set",
        "n_mels=32",
    ]
    deadline = time.time() + 90
    while True:
        submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        # Right after `ray start` the job agent may not be up yet; the server says so.
        if "No available agent" not in submitted.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "augment job finished" in submitted.stdout
    assert (out / "_SUCCESS").exists()
    deadline = time.time() + 5
    while time.time() < deadline and not list(out.glob("*/part-*.parquet")):
        time.sleep(0.1)
    assert len(list(out.glob("*/part-*.parquet"))) >= 1
