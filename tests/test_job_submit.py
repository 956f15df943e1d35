"""`ray job submit` against a local `ray start --head` this test starts (and stops) itself."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.audio_helpers import REPO, tone, write_audio
from tests.ray_head import RAY, local_head, submit_when_ready


@pytest.fixture
def ray_head(short_tmp):
    # As after `source .venv/bin/activate`: the job's `python` is the project's.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with local_head(short_tmp("rayhead"), env) as head:
        yield head.dashboard, env


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
    submitted = submit_when_ready(command, env)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "augment job finished" in submitted.stdout
    assert (out / "_SUCCESS").exists()
    deadline = time.time() + 5
    while time.time() < deadline and not list(out.glob("*/part-*.parquet")):
        time.sleep(0.1)
    assert len(list(out.glob("*/part-*.parquet"))) >= 1
