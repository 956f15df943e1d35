"""A start-up timeline for measuring where a run's seconds go (debug aid, off by default).

``RAY_PIPELINES_TIMELINE=/path/file`` makes the driver (and, through the inherited
environment, the embedded Ray's actors) append one line per milestone to that file:
``<unix time> <pid> <name>``. ``python -m bench.augment --small-end`` reads it to split the
job's wall time into imports, ``ray.init``, listing, resume check, first actor ready, first
block written, commit and exit. Unset, :func:`mark` does nothing.
"""

from __future__ import annotations

import os
import time

ENV = "RAY_PIPELINES_TIMELINE"


def mark(name: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = f"{time.time():.4f} {os.getpid()} {name}\n".encode()
    try:  # one O_APPEND write per line: lines from several processes do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass  # a debug aid never fails a run
