"""A job's CLI run killed once its first block is written, with every process it started; the environment
mark that finds those processes (tests/test_console.py looks for leftovers by it too)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from pathlib import Path

import psutil

from ray_pipelines.engine.manifest import KILL_AT
from tests.audio_helpers import REPO

TEST_MARK = "RAY_PIPELINES_TEST_MARK"  # an environment variable a run's processes inherit (Ray's workers too)
RAY_START_TIMED_OUT = "timed out during startup"  # Ray's words when an embedded node did not come up


def marked(mark: str) -> list[psutil.Process]:
    """Processes whose environment carries ``mark`` (Ray's workers inherit the driver's)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TEST_MARK) == mark:
                found.append(proc)
    return found


def run_killed_at_first_block(args: list[str], log: Path) -> None:
    """Run ``args`` (a job's CLI on an embedded Ray): its driver SIGKILLs itself as its first block's report
    arrives (``stop_point("run:first-block")``, engine/runner.py), at a point a run reaches however loaded
    the machine is; then what is left of its process group (the embedded Ray's daemons) is killed, and so
    are its Ray workers (in process groups of their own: left alone they would finish their write tasks
    after the kill). ``log`` gets the run's stderr.

    A run whose embedded Ray did not start (its raylet not registered within Ray's 30 s on a loaded
    machine: "timed out during startup", seen once in a full run of the suite) wrote no block and holds
    no lease: it is run once more, as tests/ray_head.py's ``start_node`` starts a node again."""
    for _ in range(2):
        code = _run_and_kill_what_is_left(args, log)
        if code != 1 or RAY_START_TIMED_OUT not in log.read_text():
            break
    assert code == -signal.SIGKILL, (
        f"the run should have been killed at its first block (exit {code}):\n{log.read_text()}"
    )


def _run_and_kill_what_is_left(args: list[str], log: Path) -> int:
    """The run's exit code, once it and every process it started are gone."""
    mark = uuid.uuid4().hex
    env = {**os.environ, KILL_AT: "run:first-block", TEST_MARK: mark}
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr
        )
    code = proc.wait(timeout=300)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    left = marked(mark)
    for child in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(left, timeout=10)
    return code
