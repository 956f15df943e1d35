"""What a person sees in the terminal while a job runs: our progress and summary, no Ray log lines.

By default (``quiet_ray``):

- Ray's and Ray Data's console handlers show errors only (their log files keep everything:
  ``/tmp/ray/session_latest/logs``, ``.../logs/ray-data``); this hides the token-auth notice
  and Ray Data's INFO lines.
- Workers' stdout/stderr stay in Ray's worker log files instead of streaming to the driver.
- :class:`FilteredStderr` drops Ray's retry warnings for a cluster that refuses the driver's auth
  token (the job's last line says what to set), and the one C++ line Ray prints for every actor pool:
  ``core_worker.cc: Actor ... has constructor arguments in the object store and max_restarts > 0``.
  Its cause is Ray Data's, not ours: every actor pool gets its map transformer and DataContext
  as ``ray.put`` object references (however small the constructor kwargs), and the core worker
  warns about any reference argument of a restartable actor (ray-project/ray#57733, open).
  Turning restarts off would silence it at the cost of crash recovery, so the line is filtered.
- Blocks that failed because the run was told to stop (the output store refused a write, the lease
  was taken over) are one warning line (:class:`StoppedBlocks`), not a traceback each; other failed
  blocks show one traceback per error, then one line for those that fail the same way.
- Ray's "Unhandled error" records (a result no one asked for: Ray Data's own, such as a request its
  autoscaling coordinator had cancelled by a stop) are not shown (:class:`UnhandledRayErrors`).
- Ray's notices (a task failed and is retried, a worker died: possibly out of memory) go to stderr, where
  every other warning goes (Ray prints them to stdout, which a caller may keep for the summary or
  data), and their colour codes are dropped where stderr is not a terminal (:class:`FilteredStderr`).
  In a terminal each line forwarded from stderr first clears the progress bar's line, which the bar
  redraws below it within a second (it was glued to the bar's end).
- Errors that carry a traceback are one line: the first line and the exception at the end
  (:func:`short_error`). That is Ray's notices of a failed task (``(raylet) Task ... failed. There
  are 2 retries remaining``, printed by the driver's error listener), Ray Data's "Full stack trace"
  of the error that ends the run (the job's last line names it), and that last line itself: an
  actor whose constructor raised (a teacher that cannot take the clip length, a model file a worker
  node cannot read) was some 700 lines of three tracebacks, the last line 90 of them.

``--verbose`` leaves all of it as Ray has it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import select
import struct
import sys
import termios
import threading
import time
import traceback
from typing import TextIO

from .error_text import ANSI_CODE, last_exception_line, short_error

# Colour codes (Ray colours its notices whatever the stream): dropped where stderr is no terminal.
ANSI_STYLE = re.compile(ANSI_CODE.pattern.encode())
# What a terminal line starts with when it may hold the progress bar: back to its start, clear it.
CLEAR_LINE = b"\r\x1b[K"

# Lines of the driver's stderr (C++ and Python alike) that say nothing a user can act on.
NOISE = (
    re.compile(rb"core_worker\.cc:\d+: Actor .* has constructor arguments in the object store and max_restarts > 0"),
    # Ray retries a cluster that refuses the driver's token for 20 s, a line each second; the job's last
    # line says what to set (engine/runtime.token_advice).
    re.compile(rb"gcs_client\.cc:\d+: Failed to get cluster ID from GCS server: Unauthenticated: .*InvalidAuthToken"),
)


def configure_logging(verbose: bool, ray_progress: bool = False) -> None:
    """Our loggers (WARNING, or INFO with timestamps when ``verbose``) and Ray's console handlers."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if not verbose:
        quiet_ray(keep_ray_data_info=ray_progress)


def quiet_ray(keep_ray_data_info: bool = False) -> None:
    """Ray's and Ray Data's console handlers to ERROR (their file handlers keep every level);
    workers' output stays in their log files. ``keep_ray_data_info``: Ray Data's own progress
    display (``--ray-progress``) is INFO lines when not in a terminal."""
    import ray.data  # noqa: F401  (sets up Ray Data's loggers)

    from .engine import runtime

    runtime.WORKER_LOGS_TO_DRIVER = False
    _condense_error_notices()
    unhandled = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, UnhandledRayErrors) for f in unhandled.filters):
        unhandled.addFilter(UnhandledRayErrors())
    # ray.init(configure_logging=False) removes the "ray" logger's handlers, after which its
    # warnings reach Python's last-resort handler: the logger's level is what holds them back.
    logging.getLogger("ray").setLevel(logging.ERROR)
    for name, level in (("ray", logging.ERROR), ("ray.data", logging.INFO if keep_ray_data_info else logging.ERROR)):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(level)
                if not any(isinstance(f, StoppedBlocks) for f in handler.filters):
                    handler.addFilter(StoppedBlocks())
                    handler.addFilter(RunErrorTraces())


def _condense_error_notices() -> None:
    """The driver's listener prints Ray's error notices (a task failed and is retried, a worker died)
    with ``print_to_stdstream`` (to stdout, in colour): to stderr, each one :func:`short_error`'s line."""
    from ray._private import worker

    print_notice = getattr(worker, "print_to_stdstream", None)
    if print_notice is None or getattr(print_notice, "condensed", False):
        return  # another Ray's internals, or done already

    def condensed(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            data = {**data, "is_err": True}  # to stderr, with the warnings (Ray: stdout)
            if any("\n" in line for line in data.get("lines", ())):
                data["lines"] = [short_error(line) for line in data["lines"]]
        return print_notice(data, *args, **kwargs)

    condensed.condensed = True
    worker.print_to_stdstream = condensed


class UnhandledRayErrors(logging.Filter):
    """Ray logs an error of a task whose result no one asked for when its reference goes ("Unhandled
    error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1')"). The job asks for every result of its own;
    what is left are Ray Data's, such as its autoscaling coordinator's request cancelled by a stop
    (``RpcError: CANCELLED``, a traceback after the stopped run's last line). Kept with --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unhandled error (suppress with")


class RunErrorTraces(logging.Filter):
    """Ray Data logs the error that ends a run with "Exception occurred in ... code" and its full stack
    trace, then raises it to the job, whose last line names it (:func:`short_error`); on the console
    those records go (Ray Data's log file and ``--verbose`` keep them)."""

    MESSAGES = (
        "Exception occurred in Ray Data or Ray Core internal code",
        "Exception occurred in user code",
        "Full stack trace:",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGES)


# What a block that failed because the run was told to stop (engine/control.py) raised, as Ray's
# traceback text names it (the exception crossed from an actor: its class is known by name only).
STOPPED_BLOCK = re.compile(
    r"^ray_pipelines\.engine\.control\.(?:RunStopped: run stopped \(\w+\)|OutputStoreError): (.+)$", re.M
)


class StoppedBlocks(logging.Filter):
    """Ray Data logs every failed block with a traceback of some 50 lines. When the output store
    refused a write (or the run's lease was taken over) every block in flight fails the same way:
    one screen of tracebacks per block, for what the run's last line says in one. On the console
    such a block is one warning line, once per reason; Ray Data's log file keeps each traceback.
    Any other failed block shows its traceback, once per error: blocks that fail the same way after
    it (an object store that stopped answering: 1,165 lines for six blocks) are one line, once."""

    def __init__(self):
        super().__init__()
        self.told: set[str] = set()  # the reasons a run was stopped for, said once each
        self.shown: set[str] = set()  # other errors whose first traceback was shown
        self.repeated: set[str] = set()  # and those said once more, in one line

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        text = "".join(traceback.format_exception(*record.exc_info))
        found = STOPPED_BLOCK.search(text)
        if not found:
            return self._first_of_its_kind(last_exception_line(text))
        reason = found.group(1).strip()
        if reason not in self.told:
            self.told.add(reason)
            logging.getLogger("ray_pipelines.engine.control").warning(
                "the run is stopping: %s (blocks in flight end first; tracebacks in Ray Data's log)", reason
            )
        return False

    def _first_of_its_kind(self, error: str) -> bool:
        """True (show the traceback) for a block's first error of its kind; after it, one line."""
        if error not in self.shown:
            self.shown.add(error)
            return True
        if error not in self.repeated:
            self.repeated.add(error)
            logging.getLogger("ray_pipelines.engine.control").warning(
                "more blocks failed the same way: %s (tracebacks in Ray Data's log)", error
            )
        return False


class FilteredStderr:
    """Route this process's stderr (file descriptor 2, so C++ writes too) through a thread that
    drops :data:`NOISE` lines (and colour codes where the real stderr is no terminal; where it is one,
    each forwarded chunk first clears the line the progress bar may be on).
    ``with FilteredStderr() as console:`` gives ``console``, a text
    stream on the real stderr for output that must not wait for a line end (a progress bar); what
    reached stderr before a ``console`` write is shown before it. Does nothing (``console`` is
    ``sys.stderr``) when ``enabled`` is false."""

    # How long a console write waits for the filter to catch up: a process that writes to stderr
    # without pause must not stall the progress display.
    SETTLE_TIMEOUT_S = 0.5

    def __init__(self, enabled: bool = True, patterns: tuple[re.Pattern, ...] = NOISE):
        self.enabled = enabled
        self.patterns = patterns
        self._saved: int | None = None
        self._reader: int | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._forwarding = False  # the pump holds bytes it has read and not yet written
        self._terminal = False  # the real stderr is a terminal (set on entry)
        self.console: TextIO = sys.stderr

    def __enter__(self) -> TextIO:
        if not self.enabled:
            return self.console
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._terminal = os.isatty(self._saved)
        self._reader, writer = os.pipe()
        os.dup2(writer, 2)
        os.close(writer)
        self._thread = threading.Thread(target=self._pump, daemon=True, name="stderr-filter")
        self._thread.start()
        self.console = _InOrderConsole(os.fdopen(os.dup(self._saved), "w", buffering=1), self._settle)
        return self.console

    def _noise(self, line: bytes) -> bool:
        return any(p.search(line) for p in self.patterns)

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                select.select([self._reader], [], [])  # the bytes stay counted in the pipe until read
                with self._lock:
                    self._forwarding = True
                chunk = os.read(self._reader, 65536)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            self._forward(b"".join(line + b"\n" for line in lines if not self._noise(line)))
            with self._lock:
                self._forwarding = False
        if not self._noise(pending):
            self._forward(pending)

    def _settle(self) -> None:
        """Wait (at most ``SETTLE_TIMEOUT_S``) until every whole line written to stderr so far is
        forwarded: the pipe is empty and the pump holds nothing."""
        deadline = time.monotonic() + self.SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._lock:
                if not self._forwarding and _unread_bytes(self._reader) == 0:
                    return
            time.sleep(0.001)

    def _forward(self, data: bytes) -> None:
        if not data:
            return
        if self._terminal:
            data = CLEAR_LINE + data  # a progress bar's line, which the bar redraws below
        else:
            data = ANSI_STYLE.sub(b"", data)
        try:
            os.write(self._saved, data)
        except OSError:  # the real stderr is gone (a closed pipe): keep draining, never block writers
            pass

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        sys.stderr.flush()
        self.console.flush()
        os.dup2(self._saved, 2)  # closes our end of the pipe: the pump reads to the end and stops
        self._thread.join(timeout=5)
        self.console.close()
        os.close(self._reader)
        os.close(self._saved)


def _unread_bytes(fd: int) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class _InOrderConsole:
    """A text stream on the real stderr whose writes wait for the filter to forward what reached
    stderr first (a child process's line, a C++ log line), then go out at once."""

    def __init__(self, stream: TextIO, settle):
        self._stream = stream
        self._settle = settle

    def write(self, text: str) -> int:
        self._settle()
        written = self._stream.write(text)
        self._stream.flush()
        return written

    def __getattr__(self, name):  # flush, fileno, isatty, close: the stream's own
        return getattr(self._stream, name)
