"""Run control: stopping a run early, and letting go of the work of lost nodes.

**Stop.** When the output store refuses writes (no space, read-only, quota, permission,
credentials rejected), every block would fail the same way after doing all of its decode and
model work. The writer that meets the failure tells the run's :class:`RunControl` (a tiny actor on
the driver's node); every block checks it before it starts and fails at once, and the driver ends
the run with the store's own error in one line (exit 1). What was committed before stays, and the
next run resumes from it. The lease heartbeat uses the same flag when the run is fenced off (its
lease was taken over: exit 2).

**Lost nodes.** Ray restarts an actor whose node died on another node, and its block waits for
that restart. On a cluster that will not grow back (no autoscaler, no spare GPU) the restart never
finds room and the run hangs. The pool's actors register with the control actor; while the plan
runs, a driver thread (:meth:`RunControl.watch_nodes`) kills, without restart, the actors of nodes
Ray has marked dead. Their blocks fail, the surviving actors finish the rest, and the runner runs
the lost inputs again on a pool sized for the nodes that are left (``lost_retries``). Actors that
crash on a live node still restart as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Iterator

import ray

from ..error_text import exception_chain
from ..storage import s3_error
from .runtime import ray_nodes

log = logging.getLogger(__name__)

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
    for seen in exception_chain(error):
        if isinstance(seen, OutputStoreError):
            return str(seen)
        # s3fs turns AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken into PermissionError.
        if (
            isinstance(seen, PermissionError)
            or (isinstance(seen, OSError) and seen.errno in STORE_ERRNOS)
            or s3_error(seen)[0] == "NoSuchBucket"
        ):
            words = seen.strerror or str(seen)
            place = getattr(seen, "filename", None) or where
            return f"write failed: {words}" + (f": {place}" if place else "")
    return ""


@contextlib.contextmanager
def store_failures_raised(where: str) -> Iterator[None]:
    """In the body (the driver's own reads and writes of the output), a failure of the store itself
    becomes :class:`OutputStoreError` with its words in one line; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        reason = store_failure(e, where=where)
        if reason:
            raise OutputStoreError(reason) from e
        raise


@ray.remote(num_cpus=0)
class _Control:
    def __init__(self):
        self.kind, self.reason = "", ""
        self.actors: dict[str, tuple[str, object]] = {}  # actor id -> (node id, handle)

    def set(self, kind: str, reason: str) -> None:
        if not self.reason:  # the first reason is the one that stopped the run
            self.kind, self.reason = kind, reason

    def get(self) -> tuple[str, str]:
        return self.kind, self.reason

    def register(self, node_id: str, actor_id: str, handle) -> None:
        self.actors[actor_id] = (node_id, handle)  # a restarted actor registers again from its new node

    def actors_on(self, node_ids: list[str]) -> list:
        dead = set(node_ids)
        return [handle for node, handle in self.actors.values() if node in dead]


class RunControl:
    """A run-wide stop flag and registry of pool actors (an actor on the driver's node, so it never
    dies with a lost worker node). Pickled into sinks and stages; each copy remembers a stop once
    it has seen one."""

    def __init__(self):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._actor = _Control.options(scheduling_strategy=here).remote()
        self._seen: tuple[str, str] | None = None

    def close(self) -> None:
        """End the control actor once the run's blocks are done. Left to Ray, it lived as long as the
        driver's Ray session: a notebook or a script running several jobs in one session kept one
        worker process (about 200 MB) per run."""
        with contextlib.suppress(Exception):  # already gone with its node or Ray: nothing to end
            ray.kill(self._actor, no_restart=True)

    # ---- stop ----------------------------------------------------------------------------------
    def stop(self, kind: str, reason: str) -> None:
        ray.get(self._actor.set.remote(kind, reason), timeout=60)

    def state(self) -> tuple[str, str]:
        """``(kind, reason)`` once stopped (``kind`` "store" or "fenced"), else ``("", "")``."""
        if self._seen is None:
            kind, reason = ray.get(self._actor.get.remote(), timeout=60)
            if not reason:
                return "", ""
            self._seen = (kind, reason)
        return self._seen

    def check(self) -> None:
        kind, reason = self.state()
        if reason:
            raise RunStopped(kind, reason)

    # ---- lost nodes --------------------------------------------------------------------------------
    def register_actor(self) -> None:
        """Called in a pool actor's constructor: where it runs, and a handle to kill it by."""
        context = ray.get_runtime_context()
        self._actor.register.remote(context.get_node_id(), context.get_actor_id(), context.current_actor)

    def release_lost_nodes(self, seen_dead: set[str]) -> int:
        """Kill (no restart) the registered actors of nodes that died since ``seen_dead`` was taken."""
        nodes = ray_nodes()
        if nodes is None:  # no answer this time: the next look finds the same dead nodes
            return 0
        dead = {node["NodeID"] for node in nodes if not node.get("Alive")} - seen_dead
        if not dead:
            return 0
        handles = ray.get(self._actor.actors_on.remote(sorted(dead)), timeout=60)
        for handle in handles:
            ray.kill(handle, no_restart=True)
        seen_dead |= dead
        log.warning("%d nodes were lost; released their %d actors (their blocks run again)", len(dead), len(handles))
        return len(handles)

    @contextlib.contextmanager
    def watch_nodes(self, every_s: float = 2.0) -> Iterator[None]:
        """For the body: a driver thread that releases the actors of nodes that die."""
        done = threading.Event()
        # Nodes dead before the run held none of its actors (unknown when Ray does not answer: then
        # the first look releases nothing new, as none of them has registered actors).
        seen_dead = {node["NodeID"] for node in ray_nodes() or [] if not node.get("Alive")}

        def watch() -> None:
            while not done.wait(every_s):
                try:
                    self.release_lost_nodes(seen_dead)
                except Exception as e:  # the watch must never take the run down
                    log.warning("node watch: %s", e)

        thread = threading.Thread(target=watch, name="node-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=30)
