"""A node lost mid-job, on one machine: a head and a second node started with `ray start` (their
own ports and temp dirs, loopback only, stopped by their own process ids). The second node dies
while the job runs; its inputs are run again within the run (by Ray, when the lost actor finds room
to restart, else by the run's own retry), which ends complete (exit 0), or, with the in-run retries
exhausted, incomplete (exit 3, no _SUCCESS) and a rerun finishes it. Either way the output equals an
uninterrupted run's. (tests/test_unattended.py has the run's retry without a cluster.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from tests.audio_helpers import REPO, tone, write_audio
from tests.output_helpers import Store, assert_no_leftovers, committed_rows
from tests.ray_head import RAY, local_head, node_processes, worker_node

JOB = dict(num_versions=2, duration=1.0, sample_rate=16000, n_mels=32, n_fft=512, hop_length=256, inputs_per_block=1)


def node_tree(temp_dir: Path) -> list[psutil.Process]:
    """A node's processes (their command lines name its temp dir) and everything they started."""
    procs = node_processes(str(temp_dir))
    for proc in list(procs):
        try:
            procs.extend(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return list({p.pid: p for p in procs}.values())


def is_map_worker(proc: psutil.Process) -> bool:
    try:
        return "MapWorker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)


@pytest.fixture
def two_nodes(short_tmp):
    head_dir, node_dir = short_tmp("head"), short_tmp("node")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)}
    head = local_head(head_dir, env, num_cpus=2, dashboard=False)
    try:
        with head as started, worker_node(node_dir, env, started.address, num_cpus=1):
            # The job plans its pool from the CPUs the cluster has when it starts: wait for the node's.
            deadline = time.time() + 120
            while time.time() < deadline:
                status = subprocess.run(
                    [RAY, "status", f"--address={started.address}"], env=env, capture_output=True, text=True, timeout=60
                )
                if "/3.0 CPU" in status.stdout:
                    break
                time.sleep(1)
            assert "/3.0 CPU" in status.stdout, status.stdout + status.stderr
            yield started.address, env, node_dir
    finally:
        kill(node_tree(node_dir) + node_tree(head_dir))  # workers too, whatever the test left


def test_a_node_lost_mid_job_is_retried_within_the_run(two_nodes, tmp_path, ray_local):
    address, env, node_dir = two_nodes
    for i in range(24):
        write_audio(tmp_path / "in" / f"clip{i:02d}.flac", tone(1.0, 16000, freq=200.0 + 15 * i), 16000)
    out = tmp_path / "out"
    settings = [a for k, v in JOB.items() for a in ("--set", f"{k}={v}")]
    driver = subprocess.Popen(
        [sys.executable, "-m", "ray_pipelines.cli", "augment", "--no-progress", "--address", address, *settings]
        + ["--set", f"input={tmp_path / 'in'}", "--set", f"output={out}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Three actors (0.83 CPU each) on three CPUs: one runs on the second node. Lose that node once
    # the job is under way and its actor is at work (blocks of one input queue up on every actor).
    try:
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None:
            if len(list(out.glob("_manifests/*.json"))) >= 2 and any(is_map_worker(p) for p in node_tree(node_dir)):
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the job ended before the node could be lost"
        kill(node_tree(node_dir))
        log, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:  # a failed wait leaves no driver behind
            driver.kill()
            driver.wait(timeout=60)

    assert driver.returncode in (0, 3), log[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    if driver.returncode == 0:  # its blocks ran again: by Ray (the actor restarted) or by the run
        assert manifest["complete"] and (out / "_SUCCESS").exists()
    else:  # retries exhausted: reported, and the next run finishes
        assert not manifest["complete"] and not (out / "_SUCCESS").exists() and manifest["counts"]["lost"] > 0
        assert "inputs to retry; run again to finish" in log
        assert run_job(AugmentJob(config(tmp_path, "out")), progress=False).complete
    reference = run_job(AugmentJob(config(tmp_path, "ref")), progress=False)
    assert reference.complete
    store = Store.local(tmp_path)
    assert committed_rows(store, "out", "key", "version") == committed_rows(store, "ref", "key", "version")
    assert_no_leftovers(store, "out")


def config(root: Path, output: str) -> AugmentConfig:
    return validate_config(AugmentConfig, {"input": str(root / "in"), "output": str(root / output), **JOB})
