"""An error in one line, for error rows and the console.

Errors from Ray tasks and actors carry the remote traceback in their text, and TorchScript's
interpreter errors end with the exception the scripted code raised (``builtins.ValueError: ...``)
after a first line that names no cause ("The following operation failed in the TorchScript
interpreter."). One line keeps the first line and that exception at the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")
TRACEBACK_START = re.compile(r"\s*(?:Error: )?Traceback \(most recent call last\):\s*$")


def short_error(text: str) -> str:
    """An error's text without the traceback it carries: its first line, then the exception at its
    end (the last line naming one). Text of one line is returned as it is, without colour codes."""
    lines = [line.rstrip() for line in ANSI_CODE.sub("", text).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    first = TRACEBACK_START.sub("", lines[0])
    cause = next((line.strip() for line in reversed(lines[1:]) if EXCEPTION_LINE.match(line.strip())), "")
    if not cause or cause in first:
        return first
    return f"{first}{' ' if first.endswith('.') else ': '}{cause}"


def last_exception_line(text: str) -> str:
    """The last line of ``text`` that names an exception (a traceback's own error), else its last line."""
    lines = [line.strip() for line in ANSI_CODE.sub("", text).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), lines[-1] if lines else "")


def describe(error: BaseException) -> str:
    """``Type: message`` in one line (:func:`short_error`), for an error row's reason."""
    text = short_error(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then what it was raised from or while handling, and so on (a cycle ends it)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
