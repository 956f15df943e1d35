"""Unattended runs (issue 15) on local disk and on moto's S3 server: inputs that change, are deleted
and come back; a driver killed while it rewrites stale rows; incomplete runs; two runs at once."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.job import StageSpec
from ray_pipelines.engine.manifest import WAIT_AT
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.sources import SourceError
from tests.audio_helpers import REPO, encoded_bytes, tone
from tests.conftest import Lines, wait_for_other_drivers_actors
from tests.output_helpers import Store, assert_no_leftovers, committed_rows, error_rows

TINY = dict(
    num_versions=2,
    duration=0.5,
    sample_rate=16000,
    n_mels=16,
    n_fft=512,
    hop_length=256,
    batch_size=8,
    inputs_per_block=2,  # blocks of two inputs: a changed one shares its files with another
    actors=1,
    seed=5,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store.local(tmp_path)
    return Store.s3(*request.getfixturevalue("s3_bucket"))


def clip(freq: float, seconds: float = 0.7) -> bytes:
    return encoded_bytes(tone(seconds, 16000, freq=freq), "flac", 16000)


def augment(store: Store, output: str, inputs: str = "in", **overrides) -> AugmentJob:
    settings = {
        "input": store.url(inputs),
        "output": store.url(output),
        "storage_options": store.options,
        **TINY,
        **overrides,
    }
    return AugmentJob(validate_config(AugmentConfig, settings))


def rows(store: Store, output: str) -> dict:
    return committed_rows(store, output, "key", "version")


def start_held(args: list[str], step: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The CLI started with ``args``, once it says it waits at ``step`` (``RAY_PIPELINES_WAIT_AT``); ``env``
    added to this process's environment."""
    proc = start_cli(*args, env={**os.environ, **(env or {}), WAIT_AT: step})
    held = proc.stderr.readline() if select.select([proc.stderr], [], [], 300)[0] else "no line in 300 s"
    assert held.startswith(f"waiting at {step}"), held + proc.communicate(timeout=300)[1][-2000:]
    return proc


# On S3 only: the same nights on local disk are tests/test_unattended_jobs.py's, for the other four jobs
# (one engine, one Parquet sink; a run of this test there took 27-44 s of the suite's time).
@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_changed_deleted_and_reuploaded_inputs_end_equal_to_a_fresh_run(store, ray_local):
    for i in range(6):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    first = run_job(augment(store, "out", on_delete="prune"), progress=False)
    assert first.complete and first.manifest["inputs"]["new"] == 6 and len(rows(store, "out")) == 12

    # Night two: clip1 re-uploaded with new content, clip4 deleted, clip6 new.
    store.write("in/clip1.flac", clip(1000, seconds=0.8))
    store.delete("in/clip4.flac")
    store.write("in/clip6.flac", clip(700))
    second = run_job(augment(store, "out", on_delete="prune"), progress=False)
    inputs = second.manifest["inputs"]
    assert (inputs["new"], inputs["changed"], inputs["deleted"], inputs["unchanged"]) == (1, 1, 1, 4)
    assert second.counts["processed_this_run"] == 2 and second.complete
    assert {key for key, _ in rows(store, "out")} == {f"clip{i}.flac" for i in (0, 1, 2, 3, 5, 6)}

    # Night three: clip4 comes back with new content, clip2 changes again, clip5 goes.
    store.write("in/clip4.flac", clip(1200))
    store.write("in/clip2.flac", clip(1500, seconds=0.9))
    store.delete("in/clip5.flac")
    third = run_job(augment(store, "out", on_delete="prune"), progress=False)
    inputs = third.manifest["inputs"]
    assert (inputs["new"], inputs["changed"], inputs["deleted"], inputs["unchanged"]) == (1, 1, 1, 4)
    assert third.complete and inputs["kept_stale"] == {}

    fresh = run_job(augment(store, "fresh"), progress=False)  # the final inputs, from scratch
    assert fresh.complete
    assert rows(store, "out") == rows(store, "fresh")  # every row, every column, byte for byte
    assert error_rows(store, "out") == error_rows(store, "fresh") == []
    assert_no_leftovers(store, "out")


def test_keep_settings_report_stale_inputs_and_keep_their_rows(tmp_path, ray_local):
    store = Store.local(tmp_path)
    for i in range(3):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    run_job(augment(store, "out"), progress=False)
    before = rows(store, "out")
    store.write("in/clip0.flac", clip(900))
    store.delete("in/clip1.flac")
    kept = run_job(augment(store, "out", on_change="keep", on_delete="keep"), progress=False)
    assert kept.manifest["inputs"]["kept_stale"] == {"changed": ["clip0.flac"], "deleted": ["clip1.flac"]}
    assert kept.counts["processed_this_run"] == 0 and kept.complete and rows(store, "out") == before
    runner_log, said = logging.getLogger("ray_pipelines.engine.runner"), Lines()
    said.setLevel(logging.WARNING)
    runner_log.addHandler(said)
    try:
        defaults = run_job(augment(store, "out"), progress=False)  # reprocess the changed one, keep the deleted one
    finally:
        runner_log.removeHandler(said)
    assert defaults.counts["processed_this_run"] == 1
    assert defaults.manifest["inputs"]["kept_stale"] == {"deleted": ["clip1.flac"]}
    after = rows(store, "out")
    unchanged = [at for at in before if at[0] != "clip0.flac"]
    assert [after[at] for at in unchanged] == [before[at] for at in unchanged] and len(after) == len(before)
    assert all(after[at] != before[at] for at in before if at[0] == "clip0.flac")
    # What leaves the output is named before it does (a run stopped after commits no report of it; the next
    # run counted a changed input as new, a deleted one not at all): the log said nothing but a count at INFO.
    assert "augment: 1 changed inputs' old rows leave the output, to be processed again: clip0.flac" in said.lines
    said.lines = []
    runner_log.addHandler(said)
    try:
        run_job(augment(store, "out", on_delete="prune"), progress=False)
    finally:
        runner_log.removeHandler(said)
    assert said.lines == ["augment: 1 deleted inputs leave the output (on_delete: prune): clip1.flac"]


KILL_DURING_REWRITE = """
import os, signal, sys
from ray_pipelines.engine import rewrite

real_switch, switched = rewrite.switch_part, []

def switch_then_die(storage, name, replacement, folded=False):
    # {kill}: the driver dies on its second manifest switch
    switched.append(name)
    if len(switched) == 2 and "{kill}" == "after-replacement":
        storage.write_json(rewrite.replacement_name(replacement), replacement)
        os.kill(os.getpid(), signal.SIGKILL)
    if len(switched) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_switch(storage, name, replacement, folded)

rewrite.switch_part = switch_then_die
from ray_pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_killed_while_rewriting_stale_rows_reruns_to_a_fresh_run(store, ray_local):
    # Three blocks of two; one input changes in each, so three manifests are rewritten. The kill
    # lands in the second: on local disk after its new files and before its switch, on S3 between
    # the replacement manifest's write and the old one's removal.
    kill = "after-replacement" if store.is_s3 else "before-switch"
    for i in range(6):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    assert run_job(augment(store, "out"), progress=False).complete
    for i in (0, 2, 4):
        store.write(f"in/clip{i}.flac", clip(900 + 100 * i, seconds=0.8))

    args = ["--no-progress", "--quiet", "--set", f"input={store.url('in')}", "--set", f"output={store.url('out')}"]
    args += [a for k, v in {**TINY, "storage_options": store.options}.items() for a in ("--set", f"{k}={v}")]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_REWRITE.replace("{kill}", kill), "augment", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not store.exists("out/_SUCCESS")

    resumed = run_job(augment(store, "out"), progress=False)
    assert resumed.complete and resumed.counts["duplicates"] == 0
    assert run_job(augment(store, "fresh"), progress=False).complete
    assert rows(store, "out") == rows(store, "fresh")
    assert_no_leftovers(store, "out")


@pytest.mark.parametrize(
    "store, step", [("local", "fold:after-index"), ("s3", "fold:deleting")], indirect=["store"]
)  # each store once; every step (a real driver killed at each): tests/test_state_index.py
def test_a_driver_killed_inside_the_fold_reruns_to_a_fresh_run(store, on_session_ray, step):
    """The augment CLI SIGKILLed inside its commit's fold (engine/manifest.py ``stop_point``): after the
    new index is written, or between deletions of the manifests it folded. The second run of the
    night, the first run's state already folded into an index, so the fold merges old and new."""
    for i in range(4):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    assert run_job(augment(store, "out"), progress=False).complete
    for i in range(4, 9):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    env = {**os.environ, **on_session_ray, "PYTHONPATH": str(REPO), "RAY_PIPELINES_KILL_AT": step}
    code = "import sys; from ray_pipelines.engine import manifest; manifest.DELETE_BATCH = 1; "
    code += "from ray_pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    killed = subprocess.run(
        [sys.executable, "-c", code, "augment", *cli_args(store, "in", "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert store.exists("out/_manifests/index.parquet") and not store.exists("out/_SUCCESS")
    wait_for_other_drivers_actors()

    resumed = run_job(augment(store, "out"), progress=False)
    assert resumed.complete and resumed.counts["processed_this_run"] == 0 and resumed.counts["duplicates"] == 0
    assert resumed.counts["inputs_with_output"] == 9
    assert run_job(augment(store, "fresh"), progress=False).complete
    assert rows(store, "out") == rows(store, "fresh")
    assert error_rows(store, "out") == error_rows(store, "fresh") == []
    assert_no_leftovers(store, "out")


def test_a_listing_that_fails_or_matches_nothing_leaves_a_complete_outputs_success(tmp_path, ray_local):
    """The nightly prefix came back empty (a re-sync, a listing outage): the run exits 1 and changes nothing,
    yet it had removed _SUCCESS of the complete output, which manifest.json still said was complete."""
    store = Store.local(tmp_path)
    for i in range(2):
        store.write(f"in/clip{i}.flac", clip(300 + 40 * i))
    assert run_job(augment(store, "out", on_delete="prune"), progress=False).complete
    for name in ("clip0.flac", "clip1.flac"):
        (tmp_path / "in" / name).unlink()
    with pytest.raises(SourceError, match=r"^no inputs matched "):
        run_job(augment(store, "out", on_delete="prune"), progress=False)
    assert store.exists("out/_SUCCESS") and len(rows(store, "out")) == 4
    with pytest.raises(SourceError, match=r"^input not found: "):  # the folder itself gone
        run_job(augment(store, "out", inputs="gone"), progress=False)
    assert store.exists("out/_SUCCESS")
    # A run stopped while it lists has not looked at the inputs: exit 143 and no _SUCCESS, as the docs say
    store.write("in/clip2.flac", clip(500))
    proc = start_held(cli_args(store, "in", "out", on_delete="prune"), "run:prepared")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert not store.exists("out/_SUCCESS")
    # ... and a run that then fails to list puts back only what it removed: none (manifest.json, the last
    # commit's, still says complete; a stopped run may have taken inputs out since)
    with pytest.raises(SourceError, match=r"^input not found: "):
        run_job(augment(store, "out", inputs="gone"), progress=False)
    assert not store.exists("out/_SUCCESS") and store.read_json("out/manifest.json")["complete"]


def cli_args(store: Store, inputs: str, output: str, **overrides) -> list[str]:
    settings = {**TINY, "storage_options": store.options, **overrides}
    args = ["--no-progress", "--quiet", "--set", f"input={store.url(inputs)}", "--set", f"output={store.url(output)}"]
    return args + [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ray_pipelines.cli", "augment", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_incomplete_run_exits_3_without_success_and_the_next_run_finishes(s3_bucket, on_session_ray):
    store = Store.s3(*s3_bucket)  # on local disk: test_lost_inputs_run_again_within_the_run_or_leave_it_incomplete
    store.write("in/clip0.flac", clip(300))
    store.write("in/list.txt", b"clip0.flac\nlater.flac\n")
    proc = start_cli(*cli_args(store, "in/list.txt", "out"), env={**os.environ, **on_session_ray})
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 3, stderr[-2000:]
    assert "1 inputs to retry; run again to finish" in stderr
    assert not store.exists("out/_SUCCESS")
    manifest = store.read_json("out/manifest.json")
    assert manifest["complete"] is False and manifest["counts"]["to_retry"] == 1
    assert [(key, reason.split(":")[0]) for key, _, reason in error_rows(store, "out")] == [("later.flac", "missing")]

    store.write("in/later.flac", clip(500))
    wait_for_other_drivers_actors()
    again = run_job(augment(store, "out", inputs="in/list.txt"), progress=False)
    assert again.complete and again.counts["to_retry"] == 0 and store.exists("out/_SUCCESS")
    assert error_rows(store, "out") == [] and len(rows(store, "out")) == 4


def test_two_runs_started_together_one_is_refused_the_other_completes(s3_bucket, on_session_ray):
    # On local disk the lease's atomic create is raced by threads in tests/test_lease.py, and a run
    # fenced off through the CLI below.
    store = Store.s3(*s3_bucket)
    for i in range(4):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    procs = [start_cli(*cli_args(store, "in", "out"), env={**os.environ, **on_session_ray}) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert f"output {store.url('out')} is in use by run" in refused
    manifest = store.read_json("out/manifest.json")
    assert manifest["complete"] and manifest["counts"]["rows_written"] == 8 and store.exists("out/_SUCCESS")
    assert not store.exists("out/_lease.json")  # released by the run that held it
    assert_no_leftovers(store, "out")


def test_a_run_whose_lease_is_taken_over_stops_and_never_commits(tmp_path, on_session_ray):
    from ray_pipelines.engine.lease import Lease
    from ray_pipelines.storage import Storage

    store = Store.local(tmp_path)
    for i in range(12):
        store.write(f"in/clip{i:02d}.flac", clip(300 + 20 * i))
    # One input per block and a short lease (heartbeats every 0.3 s), so the run notices quickly. The driver
    # waits as its first block's report arrives (its first manifest written), however loaded the machine.
    args = cli_args(store, "in", "out", inputs_per_block=1, lease_timeout=3)
    proc = start_held(args, "run:first-block", on_session_ray)
    assert list((tmp_path / "out").glob("_manifests/part-*.json"))
    operator = Lease(Storage(store.url("out")), "operator", 600)
    operator.acquire(break_lease=True)  # e.g. someone ran with --break-lease
    # The run goes on; its heartbeat or, at the latest, its commit finds the lease gone.
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-2000:]
    assert "lost its lease" in stderr and "held by run operator" in stderr
    assert not store.exists("out/manifest.json") and not store.exists("out/_SUCCESS")
    operator.release()
    wait_for_other_drivers_actors()

    resumed = run_job(augment(store, "out"), progress=False)  # what the fenced run committed is kept
    assert resumed.complete and resumed.counts["skipped_already_committed"] >= 1
    assert resumed.counts["duplicates"] == 0 and len(rows(store, "out")) == 24


def test_a_run_taken_over_by_a_finished_run_stops_at_its_first_fenced_write_naming_that_run(tmp_path, ray_local):
    """--break-lease while a run processes, the taking run done before the first's heartbeat (every 30 s):
    each of the first run's writes came back fenced off, was taken for a block "lost to worker or node
    failures" and computed again, and the run exited 2 saying the lease was "held by nobody"."""
    store = Store.local(tmp_path)
    for i in range(8):
        store.write(f"in/clip{i:02d}.flac", clip(300 + 20 * i))
    # A long lease (a heartbeat a minute, the longest): the taker is done before the first run's next beat. The
    # held run on an embedded Ray of its own: on this process's, its actor would keep the taker's from starting.
    proc = start_held(cli_args(store, "in", "out", inputs_per_block=1, lease_timeout=3600), "run:first-block")
    taker = run_job(augment(store, "out", inputs_per_block=1), progress=False, break_lease=True)
    assert taker.complete
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-2000:]
    taker_id = json.loads((tmp_path / "out" / "_job.json").read_text())["run_id"]
    assert "lost to worker or node failures" not in stderr
    assert store.exists("out/_SUCCESS") and len(rows(store, "out")) == 16  # the taker's commit stands
    if f"lost its lease on {store.url('out')}: it is now held by run {taker_id} " in stderr:
        # a machine so loaded that the taker outlasted that minute: the beat found it still holding the lease
        pytest.skip("the first run's heartbeat came before its first fenced write")
    assert f"lost its lease on {store.url('out')}: run {taker_id} took the output over" in stderr


def test_a_run_whose_lease_is_taken_before_its_blocks_start_stops_before_computing_any(tmp_path, ray_local):
    """A lease lost while the run listed its inputs or started Ray (minutes on a big bucket): nothing told
    the run, which computed every block, had each write fenced off, ran them all again as "lost", and
    only its commit exited 2, leaving a stray data file per block."""
    from ray_pipelines.engine.lease import Lease
    from ray_pipelines.storage import Storage

    store = Store.local(tmp_path)
    for i in range(4):
        store.write(f"in/clip{i:02d}.flac", clip(300 + 20 * i))
    args = cli_args(store, "in", "out", inputs_per_block=1, lease_timeout=3)
    proc = start_held(args, "run:prepared")
    operator = Lease(Storage(store.url("out")), "operator", 600)
    operator.acquire(break_lease=True)
    time.sleep(2)  # the run's heartbeat (every 0.3 s here) finds its lease gone while it waits
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-2000:]
    assert "lost its lease" in stderr and "held by run operator" in stderr
    assert "lost to worker or node failures" not in stderr
    assert not [p for p in (tmp_path / "out").rglob("part-*") if "_manifests" not in p.parts]  # no block ran
    operator.release()


class PassThrough:
    """A second stage, so the first one's output goes through an actor the runner wraps (ControlledStage)."""

    def __call__(self, batch):
        return batch


class FailsOnce:
    """A second stage whose first block holding ``key`` fails (a marker file remembers it did): the
    block's rows never reach a writer, as when its worker dies."""

    def __init__(self, key: str, marker: str):
        self.key, self.marker = key, marker

    def __call__(self, batch):
        if self.key in set(batch["key"]) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("this block is lost")
        return batch


class AugmentDyingOn:
    """The augment stage, but its process dies (as in a native crash or an out-of-memory kill) on every
    block holding ``key``; it records whether CUDA's devices were hidden from it (a CPU actor)."""

    def __init__(self, key: str, seen: str, **stage_kwargs):
        self.key, self.stage_kwargs, self.stage = key, stage_kwargs, None
        with open(seen, "a") as f:
            f.write(repr(os.environ.get("CUDA_VISIBLE_DEVICES")) + "\n")

    def __call__(self, batch):
        if self.key in set(batch["key"]):
            os._exit(1)
        if self.stage is None:  # (built here: a worker that dies first restarts without loading torch)
            from ray_pipelines.stages.augment import AugmentStage

            self.stage = AugmentStage(**self.stage_kwargs)
        return self.stage(batch)


class AugmentDyingJob(AugmentJob):
    def __init__(self, config, key: str, seen: str):
        super().__init__(config)
        self.key, self.seen = key, seen

    def stages(self):
        return [StageSpec(AugmentDyingOn, {"key": self.key, "seen": self.seen, **self.stage_kwargs()})]


class TwoStageAugment(AugmentJob):
    def __init__(self, config, second: StageSpec | None = None):
        super().__init__(config)
        self.second = second or StageSpec(PassThrough, {}, gpu=False)

    def stages(self):
        return [*super().stages(), self.second]


def test_an_input_that_kills_its_worker_every_time_is_lost_and_the_run_goes_on(tmp_path, ray_local):
    """The pool's actors had 2 restarts: the third death left the actor dead for good, still counted in the
    pool, which Ray Data never refilled; the run sat at 2 of 8 inputs for 30 minutes (Ray Data's no-progress
    timeout), then exited 1 with nothing committed. The blocks queued on the dying worker are lost with it;
    the retry runs each lost input alone, so only the one that kills its worker stays lost."""
    store = Store.local(tmp_path)
    for i in range(4):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))
    seen = tmp_path / "seen.txt"
    job = AugmentDyingJob(augment(store, "out", inputs_per_block=2).config, "clip1.flac", str(seen))
    result = run_job(job, progress=False)
    assert not result.complete and result.counts["lost"] == 1 and result.counts["to_retry"] == 1
    assert sorted({key for key, _ in rows(store, "out")}) == ["clip0.flac", "clip2.flac", "clip3.flac"]
    assert [key for key, _, reason in error_rows(store, "out") if reason.startswith("lost:")] == ["clip1.flac"]
    # Each actor of a CPU plan had the node's GPUs hidden (Ray leaves them visible to an actor of no GPU).
    assert set(seen.read_text().split()) == {"''"}


def test_lost_inputs_run_again_within_the_run_or_leave_it_incomplete(tmp_path, ray_local):
    store = Store.local(tmp_path)
    for i in range(4):
        store.write(f"in/clip{i}.flac", clip(300 + 50 * i))

    def flaky(output: str, retries: int) -> TwoStageAugment:
        marker = StageSpec(FailsOnce, {"key": "clip2.flac", "marker": str(tmp_path / f"{output}.lost")}, gpu=False)
        return TwoStageAugment(augment(store, output, lost_retries=retries).config, marker)

    retried = run_job(flaky("retried", 1), progress=False)  # lost once, run again in the same run
    assert retried.complete and retried.counts["lost"] == 0 and store.exists("retried/_SUCCESS")
    assert len(rows(store, "retried")) == 8

    given_up = run_job(flaky("given-up", 0), progress=False)  # no retries left: incomplete
    assert not given_up.complete and not store.exists("given-up/_SUCCESS")
    assert given_up.counts["lost"] >= 1 and given_up.counts["to_retry"] == given_up.counts["lost"]
    lost = [key for key, _, reason in error_rows(store, "given-up") if reason.startswith("lost:")]
    assert "clip2.flac" in lost
    assert run_job(flaky("given-up", 0), progress=False).complete  # the next run finishes it
    # Exactly once, and the second stage (run wrapped in ControlledStage) changed nothing.
    assert run_job(augment(store, "plain"), progress=False).complete
    assert rows(store, "given-up") == rows(store, "retried") == rows(store, "plain")
