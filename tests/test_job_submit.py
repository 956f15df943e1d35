"""`ray job submit` against a local `ray start --head` this test starts (and stops) itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ray_pipelines.engine.manifest import LEASE_FILE, WAIT_AT
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


def test_ray_job_stop_unwinds_the_driver_and_a_second_submission_resumes_to_complete(ray_head, tmp_path):
    """`ray job stop` sends the driver SIGTERM (SIGKILL 3 s later): the driver stops as after Ctrl-C,
    keeps what was written and releases its lease; the next submission resumes and completes."""
    address, env = ray_head
    audio = tmp_path / "audio"
    for i in range(3):
        write_audio(audio / f"clip{i}.wav", tone(1.0, freq=300.0 + 100 * i))
    out = tmp_path / "out"
    job = [
        "--",
        "python",
        "-m",
        "jobs.augment",
        "--no-progress",
        "--config",
        "jobs/configs/augment.yaml",
        *("--set", f"input={audio}", "--set", f"output={out}", "--set", "inputs_per_block=1"),
        *("--set", "num_versions=1", "--set", "duration=1.0", "--set", "n_mels=32"),
    ]
    ray_job = [RAY, "job"]
    at = ["--address", address]

    held = f"held-{uuid.uuid4().hex[:8]}"  # its driver waits once its first block is committed
    runtime_env = json.dumps({"env_vars": {WAIT_AT: "run:first-block"}})
    submitted = submit_when_ready(
        [*ray_job, "submit", *at, "--no-wait", "--submission-id", held, "--runtime-env-json", runtime_env]
        + ["--working-dir", str(REPO), *job],
        env,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    deadline, logs = time.time() + 240, ""
    while time.time() < deadline and "waiting at run:first-block" not in logs:
        time.sleep(1)
        logs = subprocess.run([*ray_job, "logs", *at, held], env=env, capture_output=True, text=True).stdout
    assert "waiting at run:first-block" in logs, logs[-3000:]
    assert (out / LEASE_FILE).exists()
    stopped = subprocess.run([*ray_job, "stop", *at, held], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    logs = subprocess.run([*ray_job, "logs", *at, held], env=env, capture_output=True, text=True).stdout
    assert "augment: stopped (SIGTERM). This run wrote" in logs, logs[-3000:]
    assert "SIGTERM received" not in logs, logs[-3000:]  # the core worker's C++ stack dump
    assert not (out / LEASE_FILE).exists(), "the stopped driver kept its lease"
    assert not (out / "_SUCCESS").exists()
    written = len(list((out / "_manifests").glob("part-*.json")))
    assert written >= 1

    resumed = submit_when_ready([*ray_job, "submit", *at, "--working-dir", str(REPO), *job], env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "augment job finished" in resumed.stdout
    assert re.search(rf"already committed\s+{written} ", resumed.stdout), resumed.stdout[-3000:]
    assert (out / "_SUCCESS").exists()
    deadline = time.time() + 5
    while time.time() < deadline and not list(out.glob("*/part-*.parquet")):
        time.sleep(0.1)
    assert len(list(out.glob("*/part-*.parquet"))) >= 1

    # A relative output (the packaged config's `demo-output/augment`, no --set) resolves inside Ray's copy
    # of the working dir, deleted with what is in it: refused (it completed there, exit 0, out of sight)
    relative = ["output=views" if arg.startswith("output=") else arg for arg in job]
    refused = submit_when_ready([*ray_job, "submit", *at, "--working-dir", str(REPO), *relative], env)
    assert refused.returncode != 0, refused.stdout[-3000:]
    said = re.search(r"output views is inside (\S+), the copy of the working directory Ray made", refused.stdout)
    assert said and "/runtime_resources/working_dir_files/_ray_pkg_" in said.group(1), refused.stdout[-3000:]
    assert not Path(said.group(1), "views").exists()

    # Without --working-dir the driver runs where the head was started: a relative output was written
    # there, exit 0 (a head started at a repository's root wrote into the repository); refused now
    packaged = ["--", "ray-pipelines", "augment", "--no-progress", "--config", "augment", "--set", f"input={audio}"]
    packaged += ["--set", "output=views", "--set", "num_versions=1", "--set", "duration=1.0"]
    bare = submit_when_ready([*ray_job, "submit", *at, *packaged], env)
    assert bare.returncode != 0, bare.stdout[-3000:]
    said = re.search(
        r"output views is relative, and this submitted job's driver runs in (\S+) \(where the Ray", bare.stdout
    )
    assert said, bare.stdout[-3000:]
    assert not Path(said.group(1), "views").exists()
    # and a relative input not found there is named with that folder
    lost = [f"input={audio.name}" if arg.startswith("input=") else arg for arg in packaged]
    lost = [f"output={tmp_path / 'lost'}" if arg == "output=views" else arg for arg in lost]
    missing = submit_when_ready([*ray_job, "submit", *at, *lost], env)
    assert missing.returncode != 0, missing.stdout[-3000:]
    hint = f"input not found: {audio.name} (relative inputs such as {audio.name} are read in {said.group(1)}, where"
    assert hint in missing.stdout, missing.stdout[-3000:]
