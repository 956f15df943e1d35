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
import signal
import threading
from collections.abc import Iterator

INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for a process stopped by SIGINT
TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` (in the main thread; elsewhere nothing changes). After:
    the SIGINT and SIGTERM handlers as they were, for a caller that goes on (tests, notebooks)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        for number, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(number, handler)


@contextlib.contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """Around ``ray.init``, which replaces the caller's SIGTERM handler with Ray's own (``sys.exit(15)``:
    no stop message, exit code 15): puts the caller's back, if it set one (the CLI's, above). Setting it
    again also takes SIGTERM back from the core worker's C++ crash handler, which printed a stack dump
    for a plain ``kill``."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    callers = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        yield
    finally:
        if callable(callers):
            signal.signal(signal.SIGTERM, callers)


def ignore_stop_signals() -> None:
    """While a stopped run cleans up (a second Ctrl-C or SIGTERM would interrupt the clean-up), or a
    finished one shuts Ray down. Only the main thread takes signals; elsewhere nothing changes (Python
    refuses to set a handler there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_code(stop: KeyboardInterrupt) -> int:
    return TERMINATED if isinstance(stop, Terminated) else INTERRUPTED


def how(stop: KeyboardInterrupt) -> str:
    """The stop's name for messages."""
    return "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
