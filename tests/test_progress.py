"""The live progress displays, fed write reports by hand on a fake clock (no Ray)."""

from __future__ import annotations

import io

import pytest

from ray_pipelines.engine.progress import BarProgress, LineProgress, ProgressDisplay, duration, make_progress, rate
from ray_pipelines.engine.sink import report


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_every_few_percent_with_rates_eta_and_a_final_line():
    clock, out = Clock(), io.StringIO()
    progress = LineProgress("augment", "rows", out, every_seconds=60, every_percent=25, heartbeat=False, clock=clock)
    progress.start(listed=50, skipped=10, to_do=40)
    for _ in range(8):  # 8 blocks of 5 inputs, 10 rows each, one error row in every other block, 2 s apart
        clock.now += 2.0
        progress.update(report(inputs=5, rows=10, error_rows=progress.inputs_done % 10 == 0, files=1, bytes=100))
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "augment: 40 inputs to process (50 listed, 10 already committed)"
    # A line at 25 %, 50 % and 75 % (10, 20 and 30 inputs), then the end line instead of 100 %.
    assert lines[1] == (
        "augment: 10/40 inputs (25%), 2.5 inputs/s, 20 rows, 5.0 rows/s, 1 error row, elapsed 0:04, ETA 0:12"
    )
    assert lines[2].startswith("augment: 20/40 inputs (50%), 2.5 inputs/s, 40 rows, 5.0 rows/s, 2 error rows")
    assert lines[3].startswith("augment: 30/40 inputs (75%)") and lines[3].endswith("ETA 0:04")
    assert lines[4] == "augment: done, 40/40 inputs in 0:16 (2.5 inputs/s), 80 rows, 5.0 rows/s, 4 error rows"
    assert len(lines) == 5


def test_line_progress_a_line_every_few_seconds_on_slow_progress():
    clock, out = Clock(), io.StringIO()
    progress = LineProgress("teacher", "clips", out, every_seconds=10, every_percent=50, heartbeat=False, clock=clock)
    progress.start(listed=100, skipped=0, to_do=100)
    for _ in range(6):  # 1 % every 4 s: a line each time 10 s have passed since the last one
        clock.now += 4.0
        progress.update(report(inputs=1, rows=3))
    progress.close(finished=False)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [
        "teacher: 3/100 inputs (3%)",
        "teacher: 6/100 inputs (6%)",
        "teacher: stopped",
    ]
    assert "18 clips, 0.75 clips/s, no errors" in lines[-1]


def test_counts_cap_at_the_inputs_to_do_and_ignore_fenced_writes():
    progress = ProgressDisplay("encode")
    progress.start(listed=3, skipped=0, to_do=3)
    progress.update(report(inputs=2, rows=4))
    progress.update(report(inputs=2, rows=4))  # an input split over two writes counts in both
    progress.update(report(fenced=True))
    assert (progress.inputs_done, progress.rows) == (3, 8)
    assert progress.eta() == 0


def test_nothing_to_do_is_one_line():
    out = io.StringIO()
    progress = LineProgress("score", stream=out, heartbeat=False)
    progress.start(listed=7, skipped=7, to_do=0)
    progress.close()
    assert out.getvalue() == "score: all 7 inputs already committed, nothing to do\n"


def test_the_start_line_says_how_many_of_the_listed_inputs_a_keep_list_or_limit_selected():
    def start_line(**counts) -> str:
        progress = ProgressDisplay("augment")
        progress.start(**counts)
        return progress.start_line()

    assert start_line(listed=50, skipped=1, to_do=9, selected=10) == (
        "augment: 9 inputs to process (50 listed, 10 selected, 1 already committed)"
    )
    assert start_line(listed=50, skipped=10, to_do=0, selected=10) == (
        "augment: all 10 inputs already committed (50 listed, 10 selected), nothing to do"
    )
    assert start_line(listed=50, skipped=0, to_do=0, selected=0) == (
        "augment: none of the 50 inputs listed is selected (keep_list, ignore_list, limit), nothing to do"
    )


def test_bar_shows_counts_and_rate_after_the_input_count():
    clock, out = Clock(), io.StringIO()
    bar = BarProgress("features", "snippets", out, clock=clock)
    bar.start(listed=4, skipped=0, to_do=4)
    clock.now += 10
    bar.update(report(inputs=4, rows=24, error_rows=2))
    bar.close()
    text = out.getvalue()
    frames = [frame for frame in text.replace("\n", "\r").split("\r") if "|" in frame]
    assert "| 4/4 inputs [" in frames[-1] and "24 snippets, 2.4 snippets/s" in frames[-1]
    assert text.rstrip().endswith(
        "features: done, 4/4 inputs in 0:10 (0.4 inputs/s), 24 snippets, 2.4 snippets/s, 2 error rows"
    )


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_progress_picks_a_bar_for_a_terminal_lines_for_a_pipe_nothing_when_quiet():
    assert isinstance(make_progress("augment", stream=FakeTerminal()), BarProgress)
    assert isinstance(make_progress("augment", stream=io.StringIO()), LineProgress)
    assert type(make_progress("augment", stream=FakeTerminal(), quiet=True)) is ProgressDisplay  # counts, shows nothing
    assert [duration(s) for s in (0, 59.6, 75, 3725)] == ["0:00", "1:00", "1:15", "1:02:05"]
    assert [rate(r) for r in (0, 0.0351, 0.5, 28.24, 239.8)] == ["0", "0.035", "0.5", "28.2", "240"]


def test_the_eta_follows_the_pace_since_the_first_write_not_the_start_up():
    """3 minutes of start-up (Ray, GPU actors, models) then 10 inputs/s: at 600 of 6,000 inputs the ETA
    said 36 minutes (the average since the start, 2.5/s) where 9 were left."""
    clock = Clock()
    progress = ProgressDisplay("augment", clock=clock)
    progress.start(listed=6000, skipped=0, to_do=6000)
    clock.now += 180.0
    progress.update(report(inputs=100, rows=100))
    assert progress.eta() == pytest.approx(5900 / (100 / 180))  # one report: the rate since the start
    for _ in range(5):
        clock.now += 10.0
        progress.update(report(inputs=100, rows=100))
    assert progress.inputs_done == 600 and progress.eta() == pytest.approx(5400 / 10.0)
    assert progress.rates()[0] == pytest.approx(600 / 230)  # the rate shown stays the run's average


def test_the_bar_shows_the_eta_of_the_pace_since_the_first_write():
    """The bar showed tqdm's ``{remaining}``, the pace since the bar appeared (start-up included), where
    the README promises the pace since the first write (what the log lines show)."""
    clock, out = Clock(), FakeTerminal()
    bar = BarProgress("augment", "rows", out, clock=clock)
    bar.start(listed=100, skipped=0, to_do=100)
    clock.now += 180.0  # Ray and the models starting
    bar.update(report(inputs=10, rows=10))
    clock.now += 20.0
    bar.update(report(inputs=10, rows=10))  # 0.5 inputs/s since the first write: 80 left, 2:40
    frames = [frame for frame in out.getvalue().replace("\n", "\r").split("\r") if "|" in frame]
    assert "| 20/100 inputs [" in frames[-1] and "ETA 2:40, 20 rows" in frames[-1], frames[-1]
    assert "<" not in frames[-1]  # not tqdm's remaining (its own clock: the pace since the bar appeared)
    bar.close()
    final = [frame for frame in out.getvalue().replace("\n", "\r").split("\r") if "|" in frame][-1]
    assert "ETA" not in final and "20 rows" in final


def test_reports_that_arrive_together_do_not_read_as_the_pace():
    """The demo's second report came 10 ms after its first (blocks finishing together): "ETA 0:00" at 55 %.
    The pace since the first write counts once it spans a second and a tenth of the start-up."""
    clock = Clock()
    progress = ProgressDisplay("augment", clock=clock)
    progress.start(listed=116, skipped=0, to_do=116)
    clock.now += 8.0
    progress.update(report(inputs=32, rows=160))
    clock.now += 0.01
    progress.update(report(inputs=32, rows=160))
    assert progress.eta() == pytest.approx(52 / (64 / 8.01))  # the rate since the start
    clock.now += 1.0
    progress.update(report(inputs=10, rows=50))
    assert progress.eta() == pytest.approx(42 / (42 / 1.01))  # a second on: the pace since the first write


def test_a_run_waiting_for_ray_says_so_and_one_that_failed_is_not_stopped():
    """An unreachable --address showed "0/2 inputs (0%), 0 inputs/s, ... ETA ?" for 30 s, then "stopped",
    though nothing had run and no one had stopped it."""
    clock, out = Clock(), io.StringIO()
    progress = LineProgress("augment", "rows", out, every_seconds=10, every_percent=50, heartbeat=False, clock=clock)
    progress.start(listed=2, skipped=0, to_do=2)
    progress.waiting("waiting for Ray at 127.0.0.1:1")
    clock.now += 10.0
    assert progress.status_line() == "augment: 0/2 inputs, waiting for Ray at 127.0.0.1:1, elapsed 0:10"
    progress.failed = True
    progress.close(finished=False)
    assert out.getvalue().splitlines()[-1].startswith("augment: failed, 0/2 inputs in 0:10")
