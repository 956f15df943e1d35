"""The output lease on local disk and on a real S3 endpoint (moto's server): taken atomically,
renewed, taken over when stale or broken, fenced off when lost, released only by its holder."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from ray_pipelines.engine.lease import (
    Holder,
    Lease,
    LeaseHeld,
    LeaseLost,
    LocalLeaseFile,
    S3LeaseObject,
    lease_store,
)
from ray_pipelines.engine.manifest import JOB_FILE, LEASE_FILE
from ray_pipelines.storage import Storage


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "out"))
    bucket, options, _ = request.getfixturevalue("s3_bucket")
    return Storage(f"s3://{bucket}/out", options)


def lease_json(storage: Storage) -> dict:
    data, _ = lease_store(storage).read()  # one GET: a file object would fail if a heartbeat lands in between
    return json.loads(data)


def test_the_store_is_the_atomic_one(output):
    lease = Lease(output, "a", 60)
    assert isinstance(lease.store, LocalLeaseFile if output.root.startswith("/") else S3LeaseObject)


def test_a_live_lease_refuses_a_second_run_naming_the_holder(output):
    first = Lease(output, "run-one", 60)
    first.acquire()
    recorded = lease_json(output)
    assert recorded["run_id"] == "run-one" and recorded["timeout_s"] == 60 and recorded["pid"] > 0
    with pytest.raises(LeaseHeld, match="in use by run run-one on host .* --break-lease"):
        Lease(output, "run-two", 60).acquire()
    first.release()
    assert not output.exists(LEASE_FILE)
    second = Lease(output, "run-two", 60)
    second.acquire()  # free again
    assert lease_json(output)["run_id"] == "run-two"
    second.release()


def test_heartbeats_renew_and_a_stale_lease_is_taken_over_and_its_holder_fenced(output):
    old = Lease(output, "old", 0.5)
    old.acquire()
    before = lease_json(output)["heartbeat_at"]
    time.sleep(0.05)
    old.renew()
    assert lease_json(output)["heartbeat_at"] > before
    with pytest.raises(LeaseHeld):
        Lease(output, "new", 60).acquire()  # the holder's own timeout (0.5 s) is what counts
    time.sleep(0.8)  # the old run's heartbeat stops
    new = Lease(output, "new", 60)
    new.acquire()
    assert lease_json(output)["run_id"] == "new"
    with pytest.raises(LeaseLost, match="lost its lease .* held by run new"):
        old.renew()
    with pytest.raises(LeaseLost):
        old.check()
    old.release()  # a fenced run never deletes the lease of the run that took over
    assert lease_json(output)["run_id"] == "new"
    new.release()


def test_break_lease_takes_a_live_lease(output):
    live = Lease(output, "live", 600)
    live.acquire()
    taker = Lease(output, "breaker", 600)
    taker.acquire(break_lease=True)
    assert lease_json(output)["run_id"] == "breaker"
    with pytest.raises(LeaseLost):
        live.renew()
    taker.release()


def test_a_lease_taken_and_released_since_names_the_run_that_took_the_output(output):
    """The taking run (--break-lease) finished and released the lease before this one's heartbeat: "held by
    nobody (the lease was removed)", though _job.json names it."""
    live = Lease(output, "live", 600)
    live.acquire()
    taker = Lease(output, "breaker", 600)
    taker.acquire(break_lease=True)
    output.write_json(JOB_FILE, {"job": "augment", "run_id": "breaker"})
    taker.release()
    with pytest.raises(LeaseLost, match=r"held by nobody \(the lease was removed; run breaker took the output over"):
        live.renew()
    live.release()


def test_the_heartbeat_thread_reports_a_lost_lease(output):
    fenced = []
    lease = Lease(output, "beating", 2)  # a heartbeat every 0.2 s
    lease.acquire()
    lease.on_lost = fenced.append
    lease.start_heartbeat()
    try:
        first = lease_json(output)["heartbeat_at"]
        deadline = time.time() + 30
        while lease_json(output)["heartbeat_at"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert lease_json(output)["run_id"] == "beating" and not fenced  # renewed by the thread
        Lease(output, "breaker", 60).acquire(break_lease=True)  # wins the race with the heartbeats
        while not fenced and time.time() < deadline:
            time.sleep(0.05)
        assert fenced and "held by run breaker" in fenced[0]
    finally:
        lease.release()
    assert lease_json(output)["run_id"] == "breaker"


def test_a_lease_left_by_a_dead_process_on_this_host_is_taken_at_once(output):
    dead = Holder.this_process("killed", 600)
    dead.pid = 2**22 + 12345  # above pid_max: no such process
    output.write_bytes(LEASE_FILE, dead.encode())
    lease = Lease(output, "next", 600)
    lease.acquire()
    assert lease_json(output)["run_id"] == "next"
    lease.release()


def silent_holder(output: Storage, run_id: str, late_s: float, timeout_s: float = 10.0) -> Holder:
    """A lease left on the output by a run on another host whose heartbeats stopped ``late_s`` ago (a
    crashed pod): its process cannot be checked, only its heartbeat."""
    holder = Holder.this_process(run_id, timeout_s)
    holder.host, holder.heartbeat_at = "a-pod-that-crashed", time.time() - late_s
    output.write_bytes(LEASE_FILE, holder.encode())
    return holder


def test_a_silent_holders_lease_is_waited_for_and_taken_over_when_it_times_out(output):
    """What a scheduler's retry meets minutes after a crash: before, exit 2 until the lease timed out."""
    silent_holder(output, "crashed", late_s=8.0)  # 3 beats late (1 s each), 2 s before its timeout
    said = logging.Handler()
    said.emit = lambda record: warnings.append(record.getMessage())
    warnings: list[str] = []
    logging.getLogger("ray_pipelines.engine.lease").addHandler(said)
    try:
        started = time.monotonic()
        lease = Lease(output, "retry", 10)
        lease.acquire()
        waited = time.monotonic() - started
    finally:
        logging.getLogger("ray_pipelines.engine.lease").removeHandler(said)
    assert 1.0 < waited < 20
    assert lease_json(output)["run_id"] == "retry"
    assert "held by run crashed on host a-pod-that-crashed" in warnings[0] and "heartbeats stopped" in warnings[0]
    assert warnings[1].startswith("took over the lease")
    lease.release()


def test_a_live_holder_is_refused_at_once_and_a_silent_one_that_beats_again_after_the_wait(output):
    live = Lease(output, "beating", 10)
    live.acquire()  # heartbeat now: live, however long its timeout
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match="in use by run beating"):
        Lease(output, "second", 10).acquire()
    assert time.monotonic() - started < 1.5  # no wait for a live holder
    live.release()

    slow = silent_holder(output, "slow", late_s=4.0)  # its store hiccuped, then it beats again

    def beat_again() -> None:
        time.sleep(1.0)
        slow.heartbeat_at = time.time()
        output.write_bytes(LEASE_FILE, slow.encode())

    beating = threading.Thread(target=beat_again)
    beating.start()
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match="in use by run slow"):
        Lease(output, "second", 10).acquire()
    waited = time.monotonic() - started
    beating.join()
    assert 0.9 < waited < 5.0  # back as soon as the lease changed, not at its timeout
    assert lease_json(output)["run_id"] == "slow"


def test_runs_racing_for_a_free_lease_have_one_winner(output):
    barrier = threading.Barrier(6)
    winners, refused = [], []

    def take(i: int) -> None:
        lease = Lease(Storage(output.root, output.storage_options), f"racer-{i}", 600)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld:
            refused.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 5
    assert lease_json(output)["run_id"] == winners[0].run_id
    winners[0].release()


def test_an_s3_look_alike_that_ignores_conditional_headers_still_refuses_a_second_run(s3_bucket, monkeypatch):
    """A store that accepts If-None-Match and If-Match without honouring them (the real moto server, the
    headers dropped on the way): a second run took the live lease 2 s after the first, both renewed
    without noticing, and the first one's release deleted the second one's lease."""
    import s3fs

    bucket, options, _ = s3_bucket
    sent = s3fs.S3FileSystem.call_s3

    def ignoring_conditions(self, method, *args, **kwargs):
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return sent(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", ignoring_conditions)
    first = Lease(Storage(f"s3://{bucket}/out", options), "run-a", 300)
    first.acquire()
    second = Lease(Storage(f"s3://{bucket}/out", options), "run-b", 300)
    with pytest.raises(LeaseHeld, match="run-a"):
        second.acquire()
    first.renew()
    assert lease_json(first.storage)["run_id"] == "run-a"
    operator = Lease(Storage(f"s3://{bucket}/out", options), "operator", 300)
    operator.acquire(break_lease=True)  # taken over: the first run's renew and release must see it
    with pytest.raises(LeaseLost):
        first.renew()
    first.release()
    assert lease_json(operator.storage)["run_id"] == "operator"  # not deleted by the fenced run's release
    operator.release()
    assert lease_store(operator.storage).read() is None
