"""Live progress of a run, fed by the runner with each block's write report as it arrives.

``run_job(job, monitor=...)`` calls :meth:`ProgressDisplay.start` once the inputs are listed,
:meth:`ProgressDisplay.update` with every write report (see ``engine.sink.report``) and
:meth:`ProgressDisplay.close` when the run ends (finished, failed or interrupted). Two displays:

- :class:`BarProgress`: a tqdm bar, for a terminal; redrawn every second so the elapsed
  time and the ETA move while a slow block is still running.
- :class:`LineProgress`: one plain line every ``every_seconds`` or every ``every_percent``
  of the inputs, for logs and pipes.

``make_progress`` picks one for a stream (with ``quiet``, the silent base class).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm


def duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate(per_second: float) -> str:
    """A rate that never reads 0 while something moves: ``240``, ``28.2``, ``0.035``."""
    if per_second >= 100:
        return f"{per_second:.0f}"
    if per_second >= 1:
        return f"{per_second:.1f}"
    return f"{per_second:.2g}"


class ProgressDisplay:
    """Counts what the write reports say; the displays below decide when and how to show it.

    ``inputs_done`` adds the inputs each report finishes (its write holds their last sample: a long
    input's pieces, or a block split by Ray's target block size, count once); an input resumed whose
    last sample was committed before counts in none, and a retried write counts twice, so it is capped
    at the inputs to do. The manifest's counts in the summary are exact.
    """

    def __init__(self, job: str, rows_label: str = "rows", clock: Callable[[], float] = time.monotonic):
        self.job, self.rows_label = job, rows_label
        self.clock = clock
        self.listed = self.selected = self.skipped = self.to_do = 0
        self.inputs_done = self.rows = self.error_rows = self.bytes = 0
        self.started = clock()
        self._first_report: tuple[float, int] | None = None  # (when, inputs done then): the ETA's origin
        self.closed = False
        self.failed = False  # the run ended on an error, not a stop (close says "failed")
        self.waiting_for = ""  # what the run waits on before any work (Ray starting, a cluster answering)
        self.success_reached = False  # the commit went on to write _SUCCESS (writing_success)
        self._lock = threading.Lock()

    # ---- what the runner calls ------------------------------------------------------
    def start(self, listed: int, skipped: int, to_do: int, selected: int | None = None) -> None:
        """``selected``: of the ``listed`` inputs, those the run takes (keep/ignore lists, ``limit``)."""
        self.listed, self.skipped, self.to_do = listed, skipped, to_do
        self.selected = listed if selected is None else selected
        self.started = self.clock()
        self._first_report = None
        self.show_start()

    def waiting(self, what: str) -> None:
        """What the run waits on before any work ("waiting for Ray at HOST:PORT"), shown instead of rates and
        an ETA until ``waiting("")``: a cluster that does not answer took 30 s of "0 inputs/s, ETA ?"."""
        self.waiting_for = what
        self.show_waiting()

    def update(self, report: dict[str, Any]) -> None:
        if report.get("fenced"):
            return  # a newer run owns the output: nothing of this write was kept
        with self._lock:
            self.inputs_done = min(self.to_do, self.inputs_done + int(report.get("inputs", 0)))
            if self._first_report is None:
                self._first_report = (self.clock(), self.inputs_done)
            self.rows += int(report.get("rows", 0))
            self.error_rows += int(report.get("error_rows", 0))
            self.bytes += int(report.get("bytes", 0))
        self.show_update()

    def close(self, finished: bool = True) -> None:
        """``finished``: the run wrote everything it was given (else it failed or was stopped)."""
        if self.closed:
            return
        self.closed = True
        self.show_end(finished)

    def writing_success(self) -> None:
        """The run's commit is writing ``_SUCCESS``: a stop from here on came after the run was done."""
        self.success_reached = True

    # ---- figures ----------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def fraction(self) -> float:
        return self.inputs_done / self.to_do if self.to_do else 1.0

    def rates(self) -> tuple[float, float]:
        """(inputs/s, rows/s) since the run started (Ray's start-up included)."""
        seconds = max(self.elapsed, 1e-9)
        return self.inputs_done / seconds, self.rows / seconds

    def eta(self) -> float | None:
        """Seconds left at the rate since the first write report (the minutes before it, Ray and the actors
        starting, models loading, are not the pace of what is left); before a second report, or while the
        reports since the first span too little time to say a pace, at the rate since the start; None before
        the first input is done."""
        left = self.to_do - self.inputs_done
        first = self._first_report
        # The pace since the first write, once it spans a second and a tenth of the start-up: blocks that
        # finish together (the demo's second report 10 ms after its first, at 28 %) read as "ETA 0:00".
        since = self.clock() - first[0] if first is not None else 0.0
        if first is not None and self.inputs_done > first[1] and since >= max(1.0, 0.1 * (first[0] - self.started)):
            return left / ((self.inputs_done - first[1]) / since)
        inputs_per_second, _ = self.rates()
        if not inputs_per_second:
            return None
        return left / inputs_per_second

    def start_line(self) -> str:
        if not self.listed:
            return f"{self.job}: no inputs listed, nothing to do"
        if not self.selected:
            return (
                f"{self.job}: none of the {self.listed} inputs listed is selected (keep_list, ignore_list, limit), "
                "nothing to do"
            )
        selected = f", {self.selected} selected" if self.selected != self.listed else ""
        if not self.to_do:
            listed = f" ({self.listed} listed{selected})" if selected else ""
            return f"{self.job}: all {self.selected} inputs already committed{listed}, nothing to do"
        already = f", {self.skipped} already committed" if self.skipped else ""
        return f"{self.job}: {self.to_do} inputs to process ({self.listed} listed{selected}{already})"

    def counts_text(self) -> str:
        """``200 rows, 16.1 rows/s, 3 error rows``: what the bar shows after the input count."""
        _, rows_per_second = self.rates()
        plural = "s" if self.error_rows > 1 else ""
        errors = f", {self.error_rows} error row{plural}" if self.error_rows else ", no errors"
        return f"{self.rows} {self.rows_label}, {rate(rows_per_second)} {self.rows_label}/s{errors}"

    def status_line(self) -> str:
        inputs_per_second, _ = self.rates()
        eta = self.eta()
        if self.waiting_for:
            done = f"{self.inputs_done}/{self.to_do} inputs"
            return f"{self.job}: {done}, {self.waiting_for}, elapsed {duration(self.elapsed)}"
        return (
            f"{self.job}: {self.inputs_done}/{self.to_do} inputs ({100 * self.fraction:.0f}%), "
            f"{rate(inputs_per_second)} inputs/s, {self.counts_text()}, "
            f"elapsed {duration(self.elapsed)}, ETA {duration(eta) if eta is not None else '?'}"
        )

    def end_line(self, finished: bool) -> str:
        inputs_per_second, _ = self.rates()
        what = "done" if finished else ("failed" if self.failed else "stopped")
        return (
            f"{self.job}: {what}, {self.inputs_done}/{self.to_do} inputs in {duration(self.elapsed)} "
            f"({rate(inputs_per_second)} inputs/s), {self.counts_text()}"
        )

    # ---- display hooks (the base class shows nothing) --------------------------------
    def show_start(self) -> None: ...

    def show_update(self) -> None: ...

    def show_waiting(self) -> None:
        """``waiting_for`` changed (no report arrived; the displays below show it as they show an update)."""

    def show_end(self, finished: bool) -> None: ...


def _terminal_columns(stream: TextIO | None) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class _Ticker:
    """Calls ``tick`` every ``seconds`` on a daemon thread until stopped."""

    def __init__(self, seconds: float, tick):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds, tick), daemon=True, name="progress-ticker")
        self._thread.start()

    def _run(self, seconds: float, tick) -> None:
        while not self._stop.wait(seconds):
            tick()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class BarProgress(ProgressDisplay):
    """A tqdm bar over the inputs, with rows, rate and errors after it."""

    def __init__(self, job: str, rows_label: str = "rows", stream: TextIO | None = None, **kwargs):
        super().__init__(job, rows_label, **kwargs)
        self.stream = stream
        self.bar: tqdm | None = None
        self._ticker: _Ticker | None = None

    def show_start(self) -> None:
        print(self.start_line(), file=self.stream, flush=True)
        if not self.to_do:
            return
        self.bar = tqdm(
            total=self.to_do,
            desc=self.job,
            unit=" inputs",
            postfix=self.bar_postfix(),
            file=self.stream,
            # Follow the terminal's width; a terminal that reports none (a bare pseudo-terminal) gets 100.
            dynamic_ncols=bool(_terminal_columns(self.stream)),
            ncols=None if _terminal_columns(self.stream) else 100,
            smoothing=0,  # the average rate over the run, like the plain lines
            # Our ETA (the pace since the first write, as the plain lines), not tqdm's {remaining}: that is the
            # pace since the bar appeared, minutes of Ray and models starting included.
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} inputs "
            "[{elapsed}, {rate_noinv_fmt}{postfix}]",
        )
        self._ticker = _Ticker(1.0, self._refresh)

    def _refresh(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.set_postfix_str(self.bar_postfix(), refresh=True)

    def bar_postfix(self) -> str:
        if self.waiting_for:
            return self.waiting_for
        eta = self.eta()
        return f"ETA {duration(eta) if eta is not None else '?'}, {self.counts_text()}"

    def show_update(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.n = self.inputs_done
                self.bar.set_postfix_str(self.bar_postfix(), refresh=True)

    def show_waiting(self) -> None:
        self.show_update()

    def show_end(self, finished: bool) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        with self._lock:
            if self.bar is not None:
                self.bar.n = self.inputs_done
                self.bar.set_postfix_str(self.counts_text(), refresh=True)  # no ETA on the finished bar
                self.bar.close()
                self.bar = None
        if self.to_do:
            print(self.end_line(finished), file=self.stream, flush=True)


class LineProgress(ProgressDisplay):
    """A line when another ``every_percent`` of the inputs is done or ``every_seconds`` passed
    (``heartbeat``: also while no report arrives)."""

    def __init__(
        self,
        job: str,
        rows_label: str = "rows",
        stream: TextIO | None = None,
        every_seconds: float = 10.0,
        every_percent: float = 5.0,
        heartbeat: bool = True,
        **kwargs,
    ):
        super().__init__(job, rows_label, **kwargs)
        self.stream = stream
        self.heartbeat = heartbeat
        self.every_seconds, self.every_percent = every_seconds, every_percent
        self._last_line_at = 0.0
        self._last_percent = 0.0
        self._ticker: _Ticker | None = None

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
        self._last_line_at = self.clock()

    def show_start(self) -> None:
        self._write(self.start_line())
        if self.to_do and self.heartbeat:
            # A heartbeat while nothing arrives (Ray starting, models loading, a slow block).
            self._ticker = _Ticker(min(1.0, self.every_seconds), self._maybe_write)

    def _maybe_write(self) -> None:
        with self._lock:
            if self.closed:
                return
            percent = 100 * self.fraction
            due = self.clock() - self._last_line_at >= self.every_seconds
            if due or percent - self._last_percent >= self.every_percent:
                if percent < 100:  # the end line reports completion
                    self._write(self.status_line())
                self._last_percent = percent

    def show_update(self) -> None:
        self._maybe_write()

    def show_waiting(self) -> None:
        self._maybe_write()

    def show_end(self, finished: bool) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        if self.to_do:
            with self._lock:
                self._write(self.end_line(finished))


def make_progress(
    job: str, rows_label: str = "rows", stream: TextIO | None = None, quiet: bool = False
) -> ProgressDisplay:
    """A bar when ``stream`` is a terminal, plain lines otherwise; with ``quiet``, a :class:`ProgressDisplay`
    that only counts (what a Ctrl-C message reports)."""
    if quiet:
        return ProgressDisplay(job, rows_label)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarProgress(job, rows_label, stream)
    return LineProgress(job, rows_label, stream)
