"""Stopping a run early: a failure of the output store itself, or a run fenced off.

When the output store refuses writes (no space, read-only, quota, permission, credentials
rejected), every block would fail the same way after doing all of its decode and model work.
The writer that meets the failure tells the run's :class:`StopSignal` (a tiny actor on the
driver's node); every block checks it before it starts and fails at once, and the driver ends
the run with the store's own error in one line (exit 1). What was committed before stays, and
the next run resumes from it. The lease heartbeat uses the same signal when the run is fenced
off (its lease was taken over: exit 2).
"""

from __future__ import annotations

import errno

import ray

# errno values that mean the store itself refuses writes (not one input's problem, not a hiccup).
STORE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class OutputStoreError(RuntimeError):
    """The output store refuses writes; ``str(e)`` is its error in one line."""


class RunStopped(RuntimeError):
    """Raised in a block that starts after the run was told to stop."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"run stopped ({kind}): {reason}")
        self.kind, self.reason = kind, reason


def store_failure(error: BaseException, where: str = "") -> str:
    """``"write failed: <the OS's or the store's words>: <file, else where>"`` when ``error`` (or what
    it wraps) is a failure of the store itself, else ``""``."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OutputStoreError):
            return str(seen)
        # s3fs turns AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken into PermissionError.
        if isinstance(seen, PermissionError) or (isinstance(seen, OSError) and seen.errno in STORE_ERRNOS):
            words = seen.strerror or str(seen)
            place = getattr(seen, "filename", None) or where
            return f"write failed: {words}" + (f": {place}" if place else "")
        seen = seen.__cause__ or seen.__context__
    return ""


@ray.remote(num_cpus=0)
class _Flag:
    def __init__(self):
        self.kind, self.reason = "", ""

    def set(self, kind: str, reason: str) -> None:
        if not self.reason:  # the first reason is the one that stopped the run
            self.kind, self.reason = kind, reason

    def get(self) -> tuple[str, str]:
        return self.kind, self.reason


class StopSignal:
    """A run-wide stop flag: ``stop(kind, reason)`` from anywhere, ``check()`` before a block.

    The actor lives on the driver's node (it dies with the driver, never with a lost worker node).
    Pickled into the sinks and actors; each copy remembers a stop once it has seen it.
    """

    def __init__(self):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._flag = _Flag.options(scheduling_strategy=here).remote()
        self._seen: tuple[str, str] | None = None

    def stop(self, kind: str, reason: str) -> None:
        ray.get(self._flag.set.remote(kind, reason), timeout=60)

    def state(self) -> tuple[str, str]:
        """``(kind, reason)`` once stopped (``kind`` "store" or "fenced"), else ``("", "")``."""
        if self._seen is None:
            kind, reason = ray.get(self._flag.get.remote(), timeout=60)
            if not reason:
                return "", ""
            self._seen = (kind, reason)
        return self._seen

    def check(self) -> None:
        kind, reason = self.state()
        if reason:
            raise RunStopped(kind, reason)
