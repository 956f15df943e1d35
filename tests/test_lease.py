"""The output lease on local disk and on a real S3 endpoint (moto's server): taken atomically,
renewed, taken over when stale or broken, fenced off when lost, released only by its holder."""

from __future__ import annotations

import json
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
from ray_pipelines.engine.manifest import LEASE_FILE
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
