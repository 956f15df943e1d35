"""One run at a time on an output: a lease with a heartbeat, taken and renewed atomically.

``_lease.json`` at the output root names the run that holds the output (run id, host, process,
start time, last heartbeat, its timeout). It is

- **taken** by creating it only if it does not exist: on local disk a complete temp file
  hard-linked into place (``link`` fails if the name exists), on S3 ``PutObject`` with
  ``If-None-Match: *``;
- **renewed** (heartbeat, every tenth of the timeout) and **taken over** by replacing it only if it
  is still the version read: on S3 ``PutObject`` with ``If-Match: <etag>``; on local disk a
  compare-and-replace under an exclusive ``flock`` of ``_lease.lock``;
- **released** by deleting it only if it is still this run's (S3 ``DeleteObject`` with ``If-Match``).

A lease whose heartbeat is older than its timeout, or whose process is gone (same host, same PID
namespace), is stale and may be taken over; ``--break-lease`` takes it regardless. A run that finds
a lease whose heartbeats stopped (:meth:`Holder.silent`) waits for it to go stale rather than give
up. A run that finds its lease replaced has been fenced off: it stops and commits nothing (the runner checks the lease
again just before writing ``manifest.json`` and ``_SUCCESS``). Stores with neither (other fsspec
protocols, S3 look-alikes that ignore the headers) get the same protocol without the atomicity: every
write reads the lease first (and a lease taken is read back), which catches all but the closest races.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from ..stopping import stops_held
from ..storage import Storage, is_local, s3_error, temp_name
from .manifest import LEASE_FILE, LEASE_LOCK, OutputConflict, claiming_run

log = logging.getLogger(__name__)

TAKE_ATTEMPTS = 5  # a lease that keeps changing under a stale-takeover is alive after all
BREAK_ATTEMPTS = 100  # --break-lease races a live holder's heartbeats until it wins
# A holder whose heartbeat is this many beats late, and at least SILENT_MIN_S, is most likely gone (a
# crashed pod whose retry came up on a fresh cluster): a run waits for its lease to time out and takes
# it over, rather than exit 2 (and burn a scheduler's retry) minutes before that.
SILENT_BEATS = 3
SILENT_MIN_S = 2.0


def heartbeat_interval(timeout_s: float) -> float:
    return min(60.0, max(0.05, timeout_s / 10))


class LeaseHeld(OutputConflict):
    """A live run holds the output."""


class LeaseLost(OutputConflict):
    """This run's lease was taken over: it was fenced off and must not commit."""


@dataclass
class Holder:
    """What a lease says about the run that holds it."""

    run_id: str
    host: str
    pid: int
    pid_namespace: str
    started_at: float
    heartbeat_at: float
    timeout_s: float

    @classmethod
    def this_process(cls, run_id: str, timeout_s: float) -> Holder:
        now = time.time()
        return cls(run_id, socket.gethostname(), os.getpid(), _pid_namespace(), now, now, timeout_s)

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            return cls(**{name: fields[name] for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    def stale_because(self, now: float) -> str:
        """Why another run may take this lease over ("" while it is live)."""
        age = now - self.heartbeat_at
        if age > self.timeout_s:
            return f"its last heartbeat was {age:.0f} s ago (timeout {self.timeout_s:g} s)"
        if self.host == socket.gethostname() and self.pid_namespace and self.pid_namespace == _pid_namespace():
            if not _process_alive(self.pid):
                return f"its process {self.pid} on this host is gone"
        return ""

    def silent(self, now: float) -> bool:
        """Live by its timeout, but its heartbeats stopped: most likely gone."""
        return now - self.heartbeat_at > max(SILENT_BEATS * heartbeat_interval(self.timeout_s), SILENT_MIN_S)

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        return (
            f"run {self.run_id} on host {self.host} (pid {self.pid}), started {started}, "
            f"last heartbeat {max(0.0, now - self.heartbeat_at):.0f} s ago"
        )


def _pid_namespace() -> str:
    """Processes on one host can only be checked from the same PID namespace (containers)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# ---- stores: create-if-absent, read with a version token, replace-if-unchanged, delete-if-unchanged ----
class LocalLeaseFile:
    """``_lease.json`` on a local (or NFS) filesystem."""

    def __init__(self, storage: Storage):
        self.path = storage.abspath(LEASE_FILE)
        self.lock_path = storage.abspath(LEASE_LOCK)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _temp(self, data: bytes) -> str:
        tmp = temp_name(self.path)
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def create(self, data: bytes) -> str | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self._temp(data)
        try:
            with self._locked():
                os.link(tmp, self.path)  # atomic: fails if the name exists
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return _digest(data)

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def replace(self, data: bytes, token: str) -> str | None:
        tmp = self._temp(data)
        try:
            with self._locked():
                current = self.read()
                if current is None or current[1] != token:
                    return None
                os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return _digest(data)

    def delete(self, token: str) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current[1] != token:
                return False
            os.unlink(self.path)
        return True


class S3LeaseObject:
    """``_lease.json`` on S3 with conditional requests (``If-None-Match: *`` and ``If-Match``)."""

    def __init__(self, storage: Storage):
        self.fs = storage.fs
        self.bucket, self.key, _ = self.fs.split_path(storage.abspath(LEASE_FILE))

    def _put(self, data: bytes, **condition: str) -> str | None:
        try:
            response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except (FileExistsError, FileNotFoundError) as e:  # If-None-Match failed / If-Match on a deleted lease
            if s3_error(e)[0] == "NoSuchBucket":  # not a lost race: nothing can be written there
                raise
            return None
        except OSError as e:
            if _precondition_failed(e):
                return None
            raise
        finally:
            self.fs.invalidate_cache(f"{self.bucket}/{self.key}")
        return response["ETag"]

    # Each write reads first: an S3 look-alike that ignores the conditional headers (they are recent in
    # S3 itself) would let a second run's create, a fenced run's renew or its release replace or delete the
    # holder's lease at any time; read first, only the closest races get through there.
    def create(self, data: bytes) -> str | None:
        if self.read() is not None:
            return None
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]  # one GET: the bytes and their version

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, token: str) -> str | None:
        if not self._still(token):
            return None
        return self._put(data, IfMatch=token)

    def _still(self, token: str) -> bool:
        current = self.read()
        return current is not None and current[1] == token

    def delete(self, token: str) -> bool:
        if not self._still(token):
            return False
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=token)
        except FileNotFoundError:
            return False
        except OSError as e:
            if _precondition_failed(e):
                return False
            if not _not_implemented(e):
                raise
            # A store without conditional deletes (checked above): delete.
            self.fs.rm_file(f"{self.bucket}/{self.key}")  # (rm takes [ ] * ? in an output's name for a pattern)
        finally:
            self.fs.invalidate_cache(f"{self.bucket}/{self.key}")
        return True


class PlainLeaseFile:
    """Any other fsspec store: the same protocol, checked by reading back, without atomicity."""

    def __init__(self, storage: Storage):
        self.storage = storage
        log.warning(
            "lease on %s: the store has no conditional writes here; two runs started within moments of "
            "each other may both proceed (keep one scheduler per output)",
            storage.root,
        )

    def create(self, data: bytes) -> str | None:
        return None if self.read() is not None else self._write(data)

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.storage.fs.cat_file(self.storage.abspath(LEASE_FILE))  # one request
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def _write(self, data: bytes) -> str:
        self.storage.write_bytes(LEASE_FILE, data)
        return _digest(data)

    def replace(self, data: bytes, token: str) -> str | None:
        current = self.read()
        return self._write(data) if current is not None and current[1] == token else None

    def delete(self, token: str) -> bool:
        current = self.read()
        if current is None or current[1] != token:
            return False
        self.storage.remove(LEASE_FILE)
        return True


def lease_store(storage: Storage):
    if is_local(storage.fs):
        return LocalLeaseFile(storage)
    if type(storage.fs).__name__ == "S3FileSystem":
        return S3LeaseObject(storage)
    return PlainLeaseFile(storage)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _precondition_failed(error: BaseException) -> bool:
    """412 PreconditionFailed, or 409 ConditionalRequestConflict (S3: a concurrent conditional write won)."""
    code, status = s3_error(error)
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _not_implemented(error: BaseException) -> bool:
    code, status = s3_error(error)
    return code == "NotImplemented" or status == 501


# ---- the lease ----------------------------------------------------------------------------------
class Lease:
    """This run's hold on one output."""

    def __init__(self, storage: Storage, run_id: str, timeout_s: float, store=None):
        self.storage = storage
        self.store = store or lease_store(storage)
        self.holder = Holder.this_process(run_id, timeout_s)
        self.token: str | None = None
        self.lost = ""  # why this run was fenced off ("" while it holds the lease)
        self.on_lost: Callable[[str], None] | None = None  # told once, from the heartbeat thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the heartbeat thread and the committing thread both renew

    @property
    def run_id(self) -> str:
        return self.holder.run_id

    def acquire(self, break_lease: bool = False) -> None:
        """Take the lease, or raise :class:`LeaseHeld` naming the live holder. A silent holder's lease
        (:meth:`Holder.silent`) is waited for, once, until it times out or changes."""
        waited = False
        for attempt in range(BREAK_ATTEMPTS if break_lease else TAKE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0.0, 0.05))  # another run changed it first: look again, staggered
            self.holder.heartbeat_at = time.time()
            token = self.store.create(self.holder.encode())
            if token is None:
                current = self.store.read()
                if current is None:
                    continue  # released between our create and our read: try again
                data, seen = current
                other = Holder.parse(data)
                now = time.time()
                why = "--break-lease" if break_lease else ("it is unreadable" if other is None else "")
                why = why or other.stale_because(now)
                if not why and not waited and other.silent(now):
                    waited = True
                    self._wait_while_unchanged(other, seen)
                    continue
                if not why:
                    raise LeaseHeld(
                        f"output {self.storage.root} is in use by {other.describe(now)}; wait for it to finish, "
                        f"or pass --break-lease if that run is gone (its lease times out after {other.timeout_s:g} s)"
                    )
                token = self.store.replace(self.holder.encode(), seen)
                if token is None:
                    continue
                log.warning(
                    "took over the lease on %s from %s: %s",
                    self.storage.root,
                    other.describe(now) if other else "an unreadable lease",
                    why,
                )
            if self._still_mine(token):
                self.token = token
                return
        raise LeaseHeld(f"output {self.storage.root}: could not take its lease; other runs keep changing it")

    def _wait_while_unchanged(self, other: Holder, seen: str) -> None:
        """Until the silent holder's lease times out, or it is renewed, released or taken by another run."""
        now = time.time()
        deadline = other.heartbeat_at + other.timeout_s + 1.0
        log.warning(
            "output %s is held by %s, whose heartbeats stopped; waiting %.0f s for its lease to time out "
            "(--break-lease takes it now, if that run is gone)",
            self.storage.root,
            other.describe(now),
            max(0.0, deadline - now),
        )
        while time.time() < deadline:
            time.sleep(min(heartbeat_interval(other.timeout_s), max(0.0, deadline - time.time())))
            current = self.store.read()
            if current is None or current[1] != seen:
                return

    def _still_mine(self, token: str) -> bool:
        """Read back: catches stores that accept conditional headers but ignore them."""
        current = self.store.read()
        return current is not None and current[1] == token and Holder.parse(current[0]) == self.holder

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the heartbeat found the lease taken over (no I/O)."""
        if self.lost:
            raise LeaseLost(self.lost)

    def renew(self) -> None:
        """Heartbeat: rewrite the lease only if it is still ours, else raise :class:`LeaseLost`."""
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        if self.lost:
            raise LeaseLost(self.lost)
        self.holder.heartbeat_at = time.time()
        token = self.store.replace(self.holder.encode(), self.token)
        if token is None:
            current = self.store.read()
            other = Holder.parse(current[0]) if current else None
            taker = other.describe(time.time()) if other else f"nobody (the lease was removed{self._claimed_by()})"
            self.lost = (
                f"this run ({self.run_id}) lost its lease on {self.storage.root}: it is now held by {taker}; "
                "this run was fenced off and commits nothing"
            )
            raise LeaseLost(self.lost)
        self.token = token

    def _claimed_by(self) -> str:
        """``; run X took the output over`` where ``_job.json`` names another run (one that took the lease and
        has released it since), else ""."""
        other = claiming_run(self.storage)
        return f"; run {other} took the output over, its _job.json names it" if other and other != self.run_id else ""

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self.token is None or self.lost:
                return
            try:
                self.store.delete(self.token)
            except Exception as e:  # the store failed: the lease times out by itself
                log.warning("could not release the lease on %s: %s", self.storage.root, e)
            self.token = None

    def start_heartbeat(self) -> None:
        interval = heartbeat_interval(self.holder.timeout_s)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except LeaseLost as e:
                    log.error("%s", e)
                    told = self.on_lost  # read once: the run may clear it as its blocks end
                    if told is not None:
                        told(str(e))
                    return
                except Exception as e:  # a store hiccup: the next beat tries again
                    log.warning("lease heartbeat on %s failed: %s", self.storage.root, e)

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()


@contextlib.contextmanager
def held_lease(storage: Storage, run_id: str, timeout_s: float, break_lease: bool = False) -> Iterator[Lease]:
    """Hold the output's lease (with a heartbeat) for the body; release it at the end."""
    lease = Lease(storage, run_id, timeout_s)
    lease.acquire(break_lease)
    lease.start_heartbeat()
    try:
        yield lease
    finally:
        with stops_held():  # a stop mid-release left the lease: held until it is released, then raised
            lease.release()
