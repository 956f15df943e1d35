"""Stopping a job from outside: Ctrl-C (SIGINT) and SIGTERM take the same path.

SIGTERM is what ``ray job stop``, ``timeout``, ``docker stop``, ``kill`` and systemd send, and what
Kubernetes sends a pod's main process when it deletes the pod. The CLI turns it into
:class:`Terminated`, a ``KeyboardInterrupt``, so it unwinds the run exactly as Ctrl-C does: the
driver stops iterating, what was written stays committed, the lease is released, an embedded Ray is
shut down, and the job exits 143 (the shell's code for SIGTERM) instead of dying where it stands
with the lease held.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for a process stopped by SIGINT
TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c(keep_ignored: bool = False) -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` (in the main thread; elsewhere nothing changes). After:
    the SIGINT and SIGTERM handlers as they were, for a caller that goes on (tests, notebooks); with
    ``keep_ignored`` (the program itself, about to exit), stops that :func:`ignore_stop_signals` turned off
    once the run had ended stay off: a stop while the summary prints or the interpreter exits would
    otherwise end the process by the signal (exit 143 beside a ``_SUCCESS`` the run wrote)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if not (keep_ignored and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):
            _set_handlers(saved)


def _set_handlers(handlers: dict[int, Any]) -> None:
    """Put saved handlers back (one saved as None was set outside Python and cannot be put back)."""
    for number, handler in handlers.items():
        if handler is not None:
            signal.signal(number, handler)


# How long a stop waits for what :func:`stops_held` guards (an embedded Ray starts in 3-15 s on the 2-core
# VM) before it is raised anyway: a ``ray.init`` that hangs must not hold a stop for good.
STOP_HELD_MAX_S = 60.0


@contextlib.contextmanager
def stops_held(max_s: float = STOP_HELD_MAX_S) -> Iterator[None]:
    """Within: a Ctrl-C or SIGTERM is noted, not raised; after: the SIGINT and SIGTERM handlers as they
    were, then the stop noted raised through them. A second stop within raises at once (a user who
    insists), and so does the first one after ``max_s`` seconds (``SIGALRM``, when no timer of the
    caller's runs). For code a stop must not cut in the middle: ``ray.init``, which starts processes,
    runs fork handlers where an exception a signal handler raises is printed and dropped (a run
    stopped there went on to the end and exited 0), and replaces the SIGTERM handler with its own
    (``sys.exit(15)``). Setting the handlers again afterwards also takes SIGTERM back from a C++
    handler installed meanwhile. In the main thread only (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Signals the caller ignores (SIGINT in a job started in the background) stay ignored, not held
    stops = [n for n in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(n) != signal.SIG_IGN]
    saved = {number: signal.getsignal(number) for number in stops}
    timer = signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the caller's own alarm is left alone
    if timer:
        saved[signal.SIGALRM] = signal.getsignal(signal.SIGALRM)
    held: list[int] = []
    raised: list[bool] = []

    def put_back() -> None:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _set_handlers(saved)

    def stop_now() -> None:
        put_back()
        raised.append(True)
        _deliver(held[0], saved[held[0]])

    def hold(signum, frame) -> None:
        if signum != signal.SIGALRM:
            held.append(signum)
        if signum == signal.SIGALRM or len(held) > 1:
            stop_now()
        elif timer:
            signal.setitimer(signal.ITIMER_REAL, max_s)

    for number in saved:
        signal.signal(number, hold)
    try:
        yield
    except BaseException:
        if held and not raised:  # it failed while stopping (Ctrl-C reaches the processes it started): the stop wins
            stop_now()
        put_back()
        raise
    put_back()
    if held:
        stop_now()


def _deliver(signum: int, handler) -> None:
    """What ``signum`` would have done under ``handler``: call it, or the default action."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


def ignore_stop_signals() -> None:
    """While a stopped run cleans up (a second Ctrl-C or SIGTERM would interrupt the clean-up), or a
    finished one shuts Ray down. Only the main thread takes signals; elsewhere nothing changes (Python
    refuses to set a handler there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_on_stop(code: int) -> None:
    """Once the program's run has ended and ``code`` is its exit code: a Ctrl-C or SIGTERM ends the program
    at once with that code (:func:`exit_now`), neither by the signal (exit 143 beside the ``_SUCCESS`` the
    run wrote) nor never (an ignored stop leaves a summary stuck on a stalled pipe running). In the main
    thread only (elsewhere nothing changes)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: exit_now(code))
        signal.signal(signal.SIGTERM, lambda signum, frame: exit_now(code))


def exit_now(code: int) -> None:
    """End the program with ``code``, its output flushed, without the interpreter's shutdown: that puts
    Python's signal handlers back to the defaults first (a stop in its last moments ended a finished run
    by the signal, exit 143 beside its ``_SUCCESS``; 1 run in 9 under ``timeout``), then joins threads
    and runs exit hooks the program no longer needs (it shut its Ray down)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a stalled or closed pipe, or a flush the signal interrupted
            pass
    os._exit(code)


def exit_code(stop: KeyboardInterrupt) -> int:
    return TERMINATED if isinstance(stop, Terminated) else INTERRUPTED


def how(stop: KeyboardInterrupt) -> str:
    """The stop's name for messages."""
    return "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
