"""The console a person sees: live progress in a terminal and in a pipe, quiet logs, Ctrl-C.

Each test runs ``ray-pipelines augment`` as a subprocess on a small library, and asserts counts, rates
and lines, never timings. Runs whose stop or start involves Ray's processes start their own embedded Ray, as
a user's shell would; the others connect to the test session's Ray (``on_session_ray``: an embedded Ray
costs a run about 7 CPU-seconds more, and the suite's time is CPU).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.manifest import LEASE_FILE, WAIT_AT
from ray_pipelines.engine.progress import ProgressDisplay
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.stopping import (
    Terminated,
    exit_code,
    ignore_stop_signals,
    sigterm_stops_like_ctrl_c,
    stops_held,
)
from tests.audio_helpers import REPO, make_library
from tests.conftest import Lines, wait_for_other_drivers_actors
from tests.killed_run import TEST_MARK, marked
from tests.test_augment_job import rows_by_key

SETTINGS = dict(
    num_versions=2,
    duration=1.0,
    sample_rate=16000,
    n_mels=32,
    n_fft=512,
    hop_length=256,
    batch_size=2,
    inputs_per_block=1,
    actors=1,
    seed=5,
)
RAY_NOISE = ("core_worker.cc", "Token authentication", "streaming_executor.py", "Traceback", "(MapWorker")


LISTED = 9  # the library's files


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """8 one-second tones (2 per format) and one file that is not audio (an error row)."""
    root = tmp_path_factory.mktemp("console-library")
    make_library(root, n_per_format=2, seconds=1.0)
    (root / "wav" / "broken.wav").write_bytes(b"RIFF but no audio")
    return root


def command(library: Path, output: Path, *options: str) -> list[str]:
    sets = [a for k, v in {**SETTINGS, "input": library, "output": output}.items() for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "ray_pipelines.cli", "augment", *sets, *options]


def environment(mark: str) -> dict[str, str]:
    """The checkout first on the path (the subprocess runs from another folder), and a mark
    every process it starts (Ray's included) inherits, to find leftovers by."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, TEST_MARK: mark}


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_left(mark: str, known: list[psutil.Process] = ()) -> list[psutil.Process]:
    """Processes still running that carry ``mark`` in their environment, or of ``known`` (the
    driver's descendants seen while it ran: Ray's agents do not inherit the environment)."""
    found = [proc for proc in known if alive(proc)]
    return found + [proc for proc in marked(mark) if alive(proc) and proc not in found]


def wait_for_no_processes(mark: str, known: list[psutil.Process] = (), seconds: float = 60) -> list[psutil.Process]:
    deadline = time.time() + seconds
    while (left := processes_left(mark, known)) and time.time() < deadline:
        time.sleep(0.5)
    return left


def summary_value(output: str, label: str) -> str:
    return re.search(rf"^  {re.escape(label)}\s+(.*)$", output, re.M).group(1)


def check_progress_lines(output: str, to_do: int, listed: int, skipped: int) -> None:
    """The plain progress lines: a start line, counts that only grow, rates, the final line."""
    lines = [line for line in output.splitlines() if line.startswith("augment: ")]
    already = f", {skipped} already committed" if skipped else ""
    assert lines[0] == f"augment: {to_do} inputs to process ({listed} listed{already})"
    # while Ray starts (over 10 s on a loaded machine) the lines say so, and come before any count
    waiting = [
        line
        for line in lines[1:-1]
        if re.fullmatch(rf"augment: 0/{to_do} inputs, waiting for Ray, elapsed \d+:\d\d", line)
    ]
    assert lines[1 : 1 + len(waiting)] == waiting, lines
    status = [
        re.match(r"augment: (\d+)/(\d+) inputs \((\d+)%\), ([\d.]+) inputs/s, (\d+) rows, ([\d.]+) rows/s", line)
        for line in lines[1 + len(waiting) : -1]
    ]
    assert all(status), lines
    done = [int(m.group(1)) for m in status]
    assert done == sorted(done) and all(int(m.group(2)) == to_do for m in status)
    for m in status:  # rates are present and agree with the counts (0 only before the first write)
        assert (float(m.group(4)) > 0) == (int(m.group(1)) > 0) and (float(m.group(6)) > 0) == (int(m.group(5)) > 0)
    rows = int(summary_value(output, "rows this run"))
    final = re.fullmatch(
        rf"augment: done, {to_do}/{to_do} inputs in \d+:\d\d \(([\d.]+) inputs/s\), {rows} rows, ([\d.]+) rows/s, "
        r"(no errors|\d+ error rows?)",  # this run's error rows (the summary counts the whole output)
        lines[-1],
    )
    assert final and float(final.group(1)) > 0 and float(final.group(2)) > 0, lines[-1]


def start_held_after_its_first_block(library: Path, out: Path, mark: str) -> tuple[subprocess.Popen, list]:
    """The CLI in a process group of its own (a shell's foreground job), its output in one pipe, held once
    its first block is committed, so a signal finds it running however loaded the machine (unheld, its
    blocks' manifests exist for about 2 s); with the processes it started (Ray's, agents included)."""
    proc = subprocess.Popen(
        command(library, out),
        cwd=out.parent,
        env={**environment(mark), WAIT_AT: "run:first-block"},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((out / "_manifests").glob("part-*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be stopped"
    return proc, psutil.Process(proc.pid).children(recursive=True)


def test_ctrl_c_stops_within_seconds_keeps_what_was_written_and_a_rerun_resumes_to_the_same_bytes(
    library, tmp_path, on_session_ray
):
    reference = tmp_path / "reference"
    run_job(AugmentJob(validate_config(AugmentConfig, {"input": str(library), "output": str(reference), **SETTINGS})))

    out, mark = tmp_path / "out", uuid.uuid4().hex
    proc, spawned = start_held_after_its_first_block(library, out, mark)
    assert any("raylet" in p.name() for p in spawned)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    stopped_at = time.time()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert time.time() - stopped_at < 60
    assert not any(noise in output for noise in RAY_NOISE), output
    assert "augment: stopped (Ctrl-C). This run wrote" in output
    assert "Run the same command again to resume" in output
    assert not (out / "_SUCCESS").exists()
    assert not wait_for_no_processes(mark, spawned), "Ray processes outlived the interrupted job"

    written = len(list((out / "_manifests").glob("part-*.json")))
    rerun = subprocess.run(  # on the session's Ray: the stop above was the embedded Ray's test
        command(library, out),
        cwd=tmp_path,
        env={**environment(mark), **on_session_ray},
        capture_output=True,
        text=True,
        timeout=600,
    )
    wait_for_other_drivers_actors()
    assert rerun.returncode == 0, rerun.stderr
    listed, skipped = LISTED, int(summary_value(rerun.stdout, "already committed").split()[0])
    assert skipped >= written >= 1
    check_progress_lines(rerun.stderr + rerun.stdout, to_do=listed - skipped, listed=listed, skipped=skipped)
    assert not any(noise in rerun.stderr for noise in RAY_NOISE), rerun.stderr
    assert rows_by_key(out) == rows_by_key(reference)


class CtrlCAtTheFirstReport(ProgressDisplay):
    """Ctrl-C where it lands in a run: in the driver's main thread, as a block's report arrives."""

    def update(self, report):
        raise KeyboardInterrupt


def test_a_stopped_run_leaves_no_thread_of_ray_data_behind(library, tmp_path, ray_local):
    """Before: the actors' reports were read with ``ds.iter_rows()``, whose threads (a worker and a
    prefetcher) a stop left running; the CLI then shuts Ray down, and their next call into Ray made the
    core worker end the process: a stopped job now and then exited 1 instead of 130 or 143 (seen once in
    a full run of the suite, as ``core_worker_process.cc: The core worker has already been shutdown``)."""
    cfg = validate_config(AugmentConfig, {"input": str(library), "output": str(tmp_path / "out"), **SETTINGS})
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_job(AugmentJob(cfg), progress=False, monitor=CtrlCAtTheFirstReport("augment"))
    ray_data_threads = [t.name for t in threading.enumerate() if t.name in ("Prefetcher", "iter_threaded")]
    assert stopped.tb is not None and ray_data_threads == []
    assert not (tmp_path / "out" / LEASE_FILE).exists()
    assert list((tmp_path / "out" / "_manifests").glob("part-*.json")), "the first block is kept"


def test_sigterm_to_the_runs_process_group_stops_like_ctrl_c_exits_143_and_releases_the_lease(library, tmp_path):
    """What `timeout` does: SIGTERM to the process group it started the run in (`docker stop`, `kill` and
    `ray job stop` send it to the driver alone: the other stop tests). Before, Ray's own handler
    (sys.exit(15)) ended the job with exit code 15 and the core worker's C++ handler printed a stack dump;
    then the embedded Ray's own processes, in the driver's group, took the signal too and died under the
    stopping driver: exit 1, now and then with nothing said and the lease left (3 runs of 10 under
    `timeout -s TERM`). The CLI now unwinds it as it does a Ctrl-C, and the embedded Ray's processes run
    in process groups of their own."""
    out, mark = tmp_path / "out", uuid.uuid4().hex
    proc, spawned = start_held_after_its_first_block(library, out, mark)
    assert (out / LEASE_FILE).exists()
    groups = {p.name(): os.getpgid(p.pid) for p in spawned if p.name() in ("raylet", "gcs_server")}
    os.killpg(proc.pid, signal.SIGTERM)  # before any assertion: a failed one must not leave the run held
    assert len(groups) == 2 and proc.pid not in groups.values(), groups
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    assert "augment: stopped (SIGTERM). This run wrote" in output, output
    assert "Run the same command again to resume" in output
    assert not any(noise in output for noise in (*RAY_NOISE, "SIGTERM received")), output
    assert not (out / LEASE_FILE).exists(), "the stopped run kept its lease"
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    assert list((out / "_manifests").glob("part-*.json")), "what was written is kept"
    assert not wait_for_no_processes(mark, spawned), "Ray processes outlived the stopped job"


def test_a_run_stopped_before_it_listed_says_so_and_releases_the_lease(library, tmp_path):
    """SIGTERM while the run lists its inputs (held at that point here; minutes for a bucket of millions)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        command(library, out),
        cwd=tmp_path,
        env={**environment(uuid.uuid4().hex), WAIT_AT: "run:prepared"},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr.readline().strip() == "waiting at run:prepared (RAY_PIPELINES_WAIT_AT)"
    assert (out / LEASE_FILE).exists()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "augment: stopped (SIGTERM) before it processed any input."
    assert not (out / LEASE_FILE).exists() and not list(out.glob("*/part-*.parquet"))


def held_at(
    step: str, library: Path, out: Path, tmp_path: Path, inputs: int = 2, then: str = "", ray: dict | None = None
) -> subprocess.Popen:
    """A run of ``inputs`` inputs held at ``step`` (``RAY_PIPELINES_WAIT_AT``), once it says so; and at
    ``then`` after it, if given (:func:`wait_for_hold`); on the Ray ``ray`` names (``on_session_ray``), if given."""
    proc = subprocess.Popen(
        command(library, out, "--set", f"limit={inputs}"),
        cwd=tmp_path,
        env={**environment(uuid.uuid4().hex), **(ray or {}), WAIT_AT: ",".join(filter(None, (step, then)))},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_hold(proc, step)
    return proc


def wait_for_hold(proc: subprocess.Popen, step: str) -> None:
    said = [proc.stderr.readline()]  # the progress lines come first
    while said[-1] and not said[-1].startswith("waiting at"):
        said.append(proc.stderr.readline())
    assert said[-1].strip() == f"waiting at {step} (RAY_PIPELINES_WAIT_AT)", "".join(said)


def test_success_is_the_last_file_and_a_stop_after_it_does_not_contradict_it(library, tmp_path, on_session_ray):
    """_SUCCESS was written before what a job derives from its rows (the dataset card, the score job's
    kept.txt): a run stopped between them left a "complete" output without them. And a stop after _SUCCESS
    (as the run released its lease, or while Ray shut down) exited 143 beside it, telling a scheduler to
    retry a finished run."""
    out = tmp_path / "out"
    stopped = held_at("commit:before-success", library, out, tmp_path, ray=on_session_ray)
    assert (out / "README.md").exists() and (out / "dataset_info.json").exists()
    assert not (out / "_SUCCESS").exists()
    stopped.send_signal(signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=120)
    assert stopped.returncode == 143 and not (out / "_SUCCESS").exists(), stderr
    wait_for_other_drivers_actors()
    # The rerun completes it, with one input more: held once _SUCCESS is written, then while Ray shuts down,
    # then once the summary is printed (a stop there ended the process by the signal: exit 143).
    finished = held_at(
        "commit:after-success", library, out, tmp_path, inputs=3, then="ray:shutdown,cli:done", ray=on_session_ray
    )
    assert (out / "_SUCCESS").exists()
    finished.send_signal(signal.SIGTERM)  # raised in the hold: the run unwinds, done
    wait_for_hold(finished, "ray:shutdown")
    finished.send_signal(signal.SIGTERM)  # ignored
    time.sleep(0.5)
    finished.send_signal(signal.SIGUSR1)  # the hold's own end
    wait_for_hold(finished, "cli:done")
    finished.send_signal(signal.SIGTERM)  # ends the program at once, with the run's exit code (no hold's end)
    try:
        stdout, stderr = finished.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # the stop ignored: the program still held (killed, not left behind)
        finished.kill()
        raise
    wait_for_other_drivers_actors()
    assert finished.returncode == 0, stderr
    assert stdout.splitlines()[-1] == f"augment: complete (_SUCCESS written in {out}); the stop (SIGTERM) came after it"
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["processed_this_run"], counts["inputs_with_output"]) == (1, 3)


# The CLI with SIGTERM sent while Ray makes the driver's core worker (the last second of ray.init, in C++).
STOPPED_AS_RAY_STARTS = """
import os, signal, sys, threading
import ray._raylet
made = ray._raylet.CoreWorker
def core_worker(*args, **kwargs):
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    return made(*args, **kwargs)
ray._raylet.CoreWorker = core_worker
from ray_pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_while_ray_starts_unwinds_once_it_has_started(library, tmp_path):
    """A SIGTERM while the embedded Ray started exited 15 (ray.init's own handler), 134 (the core worker's
    C++ crash handler, the lease left behind), or not at all (raised inside a fork handler, where Python
    drops it: the run went on and exited 0). Now it is held until Ray has started, then unwinds the run."""
    out, mark = tmp_path / "out", uuid.uuid4().hex
    args = [sys.executable, "-c", STOPPED_AS_RAY_STARTS, *command(library, out, "--set", "limit=2")[3:]]
    stopped = subprocess.run(args, cwd=tmp_path, env=environment(mark), capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 143, stopped.stderr
    assert "augment: stopped (SIGTERM). This run wrote at least 0 of 2 inputs" in stopped.stderr
    assert not (out / "_SUCCESS").exists() and not (out / LEASE_FILE).exists()
    assert not wait_for_no_processes(mark), "Ray processes outlived the stopped job"


def test_the_stop_message_says_its_count_is_of_the_reports_before_the_stop():
    """Blocks already writing when the stop came still commit, after the count stopped: the message said
    "This run wrote 16 of 400 inputs" where 48 were committed."""
    from ray_pipelines.cli import _stopped_message

    counts = ProgressDisplay("teacher", "clips")
    counts.start(listed=410, skipped=10, to_do=400)
    counts.update({"inputs": 16, "rows": 16})
    assert _stopped_message("teacher", counts, "SIGTERM") == (
        "\nteacher: stopped (SIGTERM). This run wrote at least 16 of 400 inputs (16 clips) before the stop, besides "
        "the 10 committed before, and the blocks that finished writing as it stopped; what was written is kept.\n"
        "Run the same command again to resume: committed inputs are skipped."
    )


def test_sigterm_raises_terminated_within_a_run_and_the_handlers_are_put_back_after_it():
    """What `_run` wraps a job in, in this process: a caller that goes on (a test, a notebook) keeps its own
    SIGINT and SIGTERM handlers, also after a stop whose clean-up ignored both."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with sigterm_stops_like_ctrl_c():
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs here, in the main thread
        ignore_stop_signals()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert exit_code(Terminated()) == 143 and exit_code(KeyboardInterrupt()) == 130
    # A run driven from another thread (an orchestrator's): no handler can be set there, and a finished run
    # must not fail on trying ("signal only works in main thread").
    failed = []
    thread = threading.Thread(target=lambda: failed.extend(_raises(ignore_stop_signals)))
    thread.start()
    thread.join()
    assert failed == [] and (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_stop_held_is_raised_after_the_guarded_code_or_at_once_when_repeated_or_late():
    """stops_held: the guarded code runs to its end through one SIGTERM, which is raised after it through
    the caller's handler; a second stop, or the first one held past max_s, is raised where the code is."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (an xdist worker ignores it)
    ran = []
    with sigterm_stops_like_ctrl_c():
        with pytest.raises(Terminated):
            with stops_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the handler runs here, and holds the stop
                ran.append("to its end")
        assert ran == ["to its end"] and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        with pytest.raises(KeyboardInterrupt) as second:  # Ctrl-C after a SIGTERM: the first stop is raised
            with stops_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
                ran.append("past the second stop")
        assert second.type is Terminated and ran == ["to its end"]
        started = time.monotonic()
        with pytest.raises(Terminated):
            with stops_held(max_s=0.3):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                ran.append("past max_s")
        assert ran == ["to its end"] and time.monotonic() - started < 4
        with pytest.raises(Terminated) as failed:  # the code failed while stopping: the stop is what was asked
            with stops_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                raise ConnectionError("the raylet went away")
        assert isinstance(failed.value.__context__, ConnectionError)
        with stops_held():  # no stop: nothing raised
            ran.append("quietly")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started in the background: SIGINT ignored
        with pytest.raises(Terminated):
            with stops_held():
                os.kill(os.getpid(), signal.SIGINT)  # stays ignored, and does not take the SIGTERM's place
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                ran.append("past both")
        assert ran[-1] == "past both" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.signal(signal.SIGINT, before[0])
    assert (
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGALRM),
    ) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _raises(call) -> list[Exception]:
    try:
        call()
    except Exception as e:
        return [e]
    return []


def run_in_terminal(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal as stdin, stdout and stderr; returns (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every process holding it exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_a_bar_in_a_terminal_with_counts_rates_and_the_final_line(library, tmp_path, on_session_ray):
    env = {**environment(uuid.uuid4().hex), **on_session_ray}
    code, output = run_in_terminal(command(library, tmp_path / "out"), tmp_path, env)
    wait_for_other_drivers_actors()
    assert code == 0, output
    frames = [f.strip() for f in output.replace("\n", "\r").split("\r") if f.strip()]
    assert frames[0] == f"augment: {LISTED} inputs to process ({LISTED} listed)"
    bars = [f for f in frames if re.match(r"augment:\s+\d+%\|", f)]
    counts = [int(re.search(rf"\| (\d+)/{LISTED} inputs", f).group(1)) for f in bars]
    assert counts[0] == 0 and counts[-1] == LISTED and counts == sorted(counts)
    rows = int(summary_value(output.replace("\r", ""), "rows this run"))
    assert re.search(
        rf"{LISTED}/{LISTED} inputs \[[\d:]+,\s+[\d.]+ inputs/s, {rows} rows, [\d.]+ rows/s, 1 error row\]",
        bars[-1],
    )
    assert any(re.search(r"inputs/s, ETA (\d+:\d\d|\?), \d+ rows", f) for f in bars[:-1]), (
        bars
    )  # the pace since the first write
    assert re.search(rf"augment: done, {LISTED}/{LISTED} inputs in \d+:\d\d \([\d.]+ inputs/s\), {rows} rows", output)
    assert "augment job finished" in output
    assert not any(noise in output for noise in RAY_NOISE), output


FILTER_SCRIPT = """
import os, subprocess, sys
from ray_pipelines.console import FilteredStderr
with FilteredStderr() as console:
    print("a python line", file=sys.stderr)
    os.write(2, b"[2026-12-02 08:06:44,244 E 15207 15207] core_worker.cc:2465: Actor with class name: 'M' and ID: "
                b"'05' has constructor arguments in the object store and max_restarts > 0. If the arguments ...\\n"
                b"[2026-12-02 08:06:45,000 E 15207 15207] core_worker.cc:100: a C++ error that matters\\n")
    subprocess.run(["sh", "-c", "echo a child process line >&2"])
    os.write(2, b"\\x1b[33m(raylet)\\x1b[0m A worker died or was killed while executing a task\\n")
    print("a bar frame\\r", end="", file=console, flush=True)
print("after the filter", file=sys.stderr)
"""


def test_the_stderr_filter_drops_only_the_constructor_arguments_line():
    result = subprocess.run(
        [sys.executable, "-c", FILTER_SCRIPT], env=environment("filter"), capture_output=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stderr.decode() == (
        "a python line\n"
        "[2026-12-02 08:06:45,000 E 15207 15207] core_worker.cc:100: a C++ error that matters\n"
        "a child process line\n"
        "(raylet) A worker died or was killed while executing a task\n"  # no colour codes in a file or pipe
        "a bar frame\rafter the filter\n"
    )


def test_in_a_terminal_each_line_from_stderr_first_clears_the_progress_bars_line(tmp_path):
    """A warning during a run was glued to the end of the bar (``... no errors]WARNING ray_pipelines...``):
    in a terminal every forwarded line starts by clearing the line; the bar redraws below it."""
    code, output = run_in_terminal([sys.executable, "-c", FILTER_SCRIPT], tmp_path, environment("filter-tty"), 60)
    assert code == 0, output
    assert output.startswith("\r\x1b[Ka python line\r\n")  # each chunk read at once: its first line clears
    assert "core_worker.cc:100: a C++ error that matters\r\n" in output
    assert "\x1b[33m(raylet)\x1b[0m A worker died" in output  # a terminal keeps Ray's colour
    assert "constructor arguments" not in output


def test_an_error_that_carries_a_traceback_is_one_line_on_the_console(ray_local, capsys):
    """An actor whose constructor raised (a teacher that cannot take the clip length): Ray's notices
    of the failed tasks, Ray Data's stack trace and the job's last line were some 700 lines."""
    import logging

    import ray
    from ray._private import worker

    from ray_pipelines.console import RunErrorTraces, _condense_error_notices
    from ray_pipelines.error_text import ANSI_CODE, short_error

    @ray.remote(num_cpus=0, max_restarts=0)
    class Broken:
        def __init__(self):
            raise RuntimeError("the clip is too short for this teacher")

        def ping(self) -> int:
            return 1

    with pytest.raises(ray.exceptions.ActorDiedError) as died:
        ray.get(Broken.remote().ping.remote())
    text = str(died.value)
    assert text.count("\n") > 3 and "  File " in text  # the frames the last line printed whole
    line = short_error(text)
    assert line.startswith("The actor died because of an error raised in its creation task") and "\n" not in line
    assert line.endswith(": RuntimeError: the clip is too short for this teacher")
    assert short_error("a line of its own") == "a line of its own"

    notice = (
        "Task T.get_location failed. There are 2 retries remaining, so the task will be retried. Error: Traceback "
        '(most recent call last):\n  File "stage.py", line 9, in __init__\n    pad(x)\nRuntimeError: Padding size'
    )
    printed = worker.print_to_stdstream
    try:
        _condense_error_notices()
        capsys.readouterr()
        worker.print_to_stdstream({"lines": [notice], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False}, False)
    finally:
        worker.print_to_stdstream = printed
    printed_now = capsys.readouterr()
    assert printed_now.out == ""  # Ray prints its notices to stdout, where a caller keeps the summary
    assert ANSI_CODE.sub("", printed_now.err) == (
        "(raylet) Task T.get_location failed. There are 2 retries remaining, so the task will be retried. "
        "RuntimeError: Padding size\n(raylet) A worker died or was killed\n"
    )

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray.data", logging.ERROR, "exceptions.py", 88, message, None, None)

    traces = RunErrorTraces()
    assert not traces.filter(record("Full stack trace:\n%s"))
    assert not traces.filter(record("Exception occurred in Ray Data or Ray Core internal code. If you continue"))
    assert traces.filter(record("MapBatches(DecodeStageWrite): actors died during initialization"))


def test_rays_unhandled_errors_are_left_off_the_console():
    """Ray Data's autoscaling coordinator's request, cancelled by a stop, printed a traceback after the
    stopped run's last line."""
    import logging

    from ray._private import worker

    from ray_pipelines.console import UnhandledRayErrors

    logger, said, unhandled = logging.getLogger("ray._private.worker"), Lines(), UnhandledRayErrors()
    logger.addHandler(said)
    try:
        worker._unhandled_error_handler(RuntimeError("RpcError: RPC error: CANCELLED"))  # Ray's own words
        logger.error("another error of Ray's")
        assert len(said.lines) == 2 and said.lines[0].startswith("Unhandled error (suppress with")
        logger.addFilter(unhandled)
        worker._unhandled_error_handler(RuntimeError("RpcError: RPC error: CANCELLED"))
        logger.error("another error of Ray's")
        assert said.lines[2:] == ["another error of Ray's"]
    finally:
        logger.removeHandler(said)
        logger.removeFilter(unhandled)


def test_blocks_that_fail_the_same_way_show_one_traceback_then_one_line():
    """An object store that stopped answering mid-run failed every block in flight the same way: 1,165
    lines of Ray Data's tracebacks for six blocks, before the job's own one-line error."""
    import logging

    from ray_pipelines.console import StoppedBlocks

    data, told, said = logging.getLogger("tests.ray.data"), logging.getLogger("ray_pipelines.engine.control"), Lines()
    shown, blocks = Lines(), StoppedBlocks()
    data.addHandler(shown)
    shown.addFilter(blocks)
    told.addHandler(said)
    try:
        for url in ("http://127.0.0.1:9/out/_job.json",) * 3 + ("http://127.0.0.1:9/out/other",):
            try:
                raise ConnectionError(f"Could not connect to the endpoint URL: {url}")
            except ConnectionError:
                data.exception('An exception was raised from a task of operator "MapBatches(DecodeStageWrite)"')
        assert len(shown.lines) == 2  # the first of each error, with its traceback
        assert said.lines == [
            "more blocks failed the same way: ConnectionError: Could not connect to the endpoint URL: "
            "http://127.0.0.1:9/out/_job.json (tracebacks in Ray Data's log)"
        ]
    finally:
        data.removeHandler(shown)
        told.removeHandler(said)


def test_a_run_whose_every_input_failed_says_why_in_the_summary_and_on_stderr(library, tmp_path, on_session_ray):
    """Every input an error row (here min_duration: 100 s; a broken model does the same) is complete and exits
    0, as documented; the summary said "inputs with errors 9" and nothing of why."""
    done = subprocess.run(
        command(library, tmp_path / "out", "--set", "min_duration=100"),
        cwd=tmp_path,
        env={**environment(uuid.uuid4().hex), **on_session_ray},
        capture_output=True,
        text=True,
        timeout=600,
    )
    wait_for_other_drivers_actors()
    assert done.returncode == 0, done.stderr
    assert summary_value(done.stdout, "rows in output") == "0"
    assert re.search(
        r"^  most common errors  8 too short \(e\.g\. \w+/\w+\.\w+: too short: 1\.000 s is below ", done.stdout, re.M
    )
    assert re.search(r"^\s+1 \w+ \(e\.g\. wav/broken\.wav: ", done.stdout, re.M), done.stdout
    assert f"ray-pipelines augment: none of the {LISTED} inputs this run processed gave a row" in done.stderr
    # a dataset card all the same: without one, load_dataset(out) took errors.jsonl for the data
    assert "No rows yet" in (tmp_path / "out" / "README.md").read_text()
