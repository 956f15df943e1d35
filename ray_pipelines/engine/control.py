"""Run control: stopping a run early, and letting go of the work of lost nodes.

**Stop.** When the output store refuses writes (no space, read-only, quota, permission,
credentials rejected), every block would fail the same way after doing all of its decode and
model work. The writer that meets the failure tells the run's :class:`RunControl` (a flag in the
GCS's key-value store); every block checks it before it starts and fails at once, and the driver ends
the run with the store's own error in one line (exit 1). What was committed before stays, and the
next run resumes from it. The lease heartbeat uses the same flag when the run is fenced off (its
lease was taken over: exit 2).

**Lost nodes.** Ray restarts an actor whose node died on another node, and its block waits for
that restart. On a cluster that will not grow back (no autoscaler, no spare GPU) the restart never
finds room and the run hangs. The pool's actors register in the run's control; while the plan
runs, a driver thread (:meth:`RunControl.watch_nodes`) has the actors of nodes Ray has marked dead
killed, without restart (by a task on the cluster). Their blocks fail, the surviving actors finish
the rest, and the runner runs the lost inputs again on a pool sized for the nodes that are left
(``lost_retries``). Actors that crash on a live node still restart as before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import pickle
import threading
import uuid
from collections.abc import Iterator

import ray
from ray.experimental import internal_kv

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


# Where a run's stop flag and actor registry live: keys under the run's own prefix in the GCS's key-value
# store, read and written by the driver and every worker (``ray.experimental.internal_kv``: the store Ray
# Serve and Ray's job manager keep their state in; underscore functions, so checked against the Ray
# the lock pins by the tests that stop runs and lose nodes). A small actor held them before: one more
# process per run, a fresh interpreter importing Ray; without it a small run costs 6.5 CPU-seconds rather
# than 7.7 (docs/benchmarks.md, the test suite's time).
KV_NAMESPACE = "ray_pipelines"


class RunControl:
    """A run-wide stop flag and registry of pool actors, in the GCS (it never dies with a lost worker
    node). Pickled into sinks and stages (it holds only its key prefix); each copy remembers a stop once
    it has seen one."""

    def __init__(self):
        self._prefix = f"run-control/{uuid.uuid4().hex}/"
        self._seen: tuple[str, str] | None = None
        self._closed = False

    def close(self) -> None:
        """Remove the run's keys once its blocks are done (a driver killed before leaves its few keys in
        the GCS, a few hundred bytes, until the cluster stops)."""
        self._closed = True  # a late stop (the lease heartbeat's) must not put a key back
        with contextlib.suppress(Exception):  # Ray already gone: nothing to remove
            internal_kv._internal_kv_del(self._prefix, del_by_prefix=True, namespace=KV_NAMESPACE)

    # ---- stop ----------------------------------------------------------------------------------
    def stop(self, kind: str, reason: str) -> None:
        if self._closed:
            return
        # Not overwritten: the first reason is the one that stopped the run.
        value = json.dumps([kind, reason])
        internal_kv._internal_kv_put(self._prefix + "stop", value, overwrite=False, namespace=KV_NAMESPACE)

    def state(self) -> tuple[str, str]:
        """``(kind, reason)`` once stopped (``kind`` "store" or "fenced"), else ``("", "")``."""
        if self._seen is None:
            value = internal_kv._internal_kv_get(self._prefix + "stop", namespace=KV_NAMESPACE)
            if not value:
                return "", ""
            kind, reason = json.loads(value)
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
        # Under the actor's id: one restarted elsewhere registers again, its new node replacing the old.
        key = f"{self._prefix}actors/{context.get_actor_id()}"
        entry = pickle.dumps((context.get_node_id(), context.current_actor))
        try:
            internal_kv._internal_kv_put(key, entry, namespace=KV_NAMESPACE)
        except Exception as e:  # an actor unregistered is only not released with a lost node: never its end
            log.warning("pool actor not registered for lost-node release: %s", e)

    def release_lost_nodes(self, seen_dead: set[str]) -> int:
        """Kill (no restart) the registered actors of nodes that died since ``seen_dead`` was taken."""
        nodes = ray_nodes()
        if nodes is None:  # no answer this time: the next look finds the same dead nodes
            return 0
        dead = {node["NodeID"] for node in nodes if not node.get("Alive")} - seen_dead
        if not dead:
            return 0
        # On the cluster, not here: a Ray Client driver (ray://) can neither unpickle a handle nor kill by it.
        released = ray.get(_kill_registered.remote(self._prefix, sorted(dead)), timeout=60)
        seen_dead |= dead
        log.warning("%d nodes were lost; released their %d actors (their blocks run again)", len(dead), released)
        return released

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


@ray.remote(num_cpus=0)
def _kill_registered(prefix: str, node_ids: list[str]) -> int:
    """Kill (no restart) the pool actors registered under ``prefix`` on ``node_ids``; how many."""
    killed = 0
    for key in internal_kv._internal_kv_list(f"{prefix}actors/", namespace=KV_NAMESPACE):
        try:
            node_id, handle = pickle.loads(internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE))
            if node_id in node_ids:
                ray.kill(handle, no_restart=True)
                killed += 1
        except Exception as e:  # one gone already (or its entry unreadable) must not keep the others
            log.warning("lost node's actor %s not released: %s", key.decode(errors="replace"), e)
    return killed
