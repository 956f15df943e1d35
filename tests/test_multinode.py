"""A node lost mid-job, on one machine: a head and a second node started with `ray start` (their
own ports and temp dirs, loopback only, stopped by their own process ids). The second node dies
while the job runs; its inputs are run again within the run (by Ray, when the lost actor finds room
to restart, else by the run's own retry), which ends complete (exit 0), or, with the in-run retries
exhausted, incomplete (exit 3, no _SUCCESS) and a rerun finishes it. Either way the output equals an
uninterrupted run's. (tests/test_unattended.py has the run's retry without a cluster.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from tests.audio_helpers import REPO, tone, write_audio
from tests.killed_run import TEST_MARK, marked
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
    with two_node_cluster(short_tmp) as cluster:
        yield cluster


@contextlib.contextmanager
def two_node_cluster(short_tmp, own_disk: Path | None = None):
    """A head (2 CPUs) and a second node (1 CPU); ``own_disk``: a folder the second node does not share."""
    head_dir, node_dir = short_tmp("head"), short_tmp("node")
    # A mark the nodes' processes inherit: a worker the node's raylet was starting as it was killed is left
    # an orphan whose command line names no temp dir (two such MapWorkers, 1 GB each, outlived a run).
    mark = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO), TEST_MARK: mark}
    head = local_head(head_dir, env, num_cpus=2, dashboard=False)
    try:
        with head as started, worker_node(node_dir, env, started.address, num_cpus=1, own_disk=own_disk):
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
        kill(node_tree(node_dir) + node_tree(head_dir) + marked(mark))  # workers too, whatever the test left


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


def mounts_privately() -> bool:
    """Whether this machine lets a process lay a tmpfs over a folder in a mount namespace of its own (root)."""
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not mounts_privately(), reason="needs unshare --mount (root) to give a node a disk of its own")
def test_local_paths_another_node_does_not_see_stop_the_run_before_it_reads(short_tmp, tmp_path):
    """A local input and output on a cluster whose second node has its own disk there (no shared file
    system): before, its blocks found no inputs and wrote to a disk the driver's commit never reads
    (exit 3, on every rerun); now the run stops at once, names the node and the paths (exit 2). The same
    cluster then runs the job on paths both nodes share."""
    own_disk = tmp_path / "disk"  # the head and the driver see these files; the second node an empty tmpfs
    for i in range(3):
        write_audio(own_disk / "in" / f"clip{i}.flac", tone(1.0, 16000, freq=200.0 + 15 * i), 16000)
    shutil.copytree(own_disk / "in", tmp_path / "in")
    settings = [a for k, v in {**JOB, "inputs_per_block": 1}.items() for a in ("--set", f"{k}={v}")]

    def augment(address: str, env: dict[str, str], root: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ray_pipelines.cli", "augment", "--no-progress", "--address", address]
        command += [*settings, "--set", f"input={root / 'in'}", "--set", f"output={root / 'out'}"]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    with two_node_cluster(short_tmp, own_disk) as (address, env, _):
        blind = augment(address, {**env, "RAY_PIPELINES_SHARED_PATH_WAIT_S": "6"}, own_disk)  # asked 2-3 times
        shared = augment(address, env, tmp_path)
    assert blind.returncode == 2, blind.stderr[-3000:]
    assert "1 of the 1 other nodes do not see the run's local paths; asking them again for up to 6 s" in blind.stderr
    said = blind.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"ray-pipelines augment: node \S+ \[[0-9a-f]{8}\] \(1 of the 1 other nodes\) does not see "
        rf"the output {re.escape(str(own_disk / 'out'))} \(a local path\) "
        rf"nor the input {re.escape(str(own_disk / 'in' / 'clip0.flac'))}: a cluster's tasks read and write on "
        r"every node, so a local path needs a file system mounted at that path on each of them .*",
        said,
    ), said
    out = own_disk / "out"
    assert not (out / "_SUCCESS").exists() and not (out / "_lease.json").exists()
    assert not list(out.rglob("*.parquet")) and not list(out.glob("_manifests/part-*"))
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert len(committed_rows(Store.local(tmp_path), "out", "key", "version")) == 3 * JOB["num_versions"]
