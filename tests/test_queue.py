"""Queue semantics on the embedded SQLite store: coalescing, claims, leases, retry, expiry."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow.models import AuditLog, Credential, Device, Operation, utcnow
from pamflow.operations import queue


@pytest.fixture(autouse=True)
def _no_events(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


def creds(engine, n: int) -> list[int]:
    with Session(engine) as db:
        dev = Device(name="d", address="10.0.0.1")
        db.add(dev)
        db.commit()
        rows = [Credential(device_id=dev.id, username=f"u{i}") for i in range(n)]
        db.add_all(rows)
        db.commit()
        return [r.id for r in rows]


def op(engine, op_id: int) -> Operation:
    with Session(engine) as db:
        return db.get(Operation, op_id)


def test_enqueue_coalesces_same_kind_per_credential(store):
    [c] = creds(store, 1)
    later = utcnow() + timedelta(hours=1)
    first = queue.enqueue(store, "change", c, priority=100, not_before=later)
    again = queue.enqueue(store, "change", c, priority=5)
    other = queue.enqueue(store, "verify", c)
    assert first.coalesced is False and again == queue.Enqueued(first.id, True)
    assert other.id != first.id and other.coalesced is False
    row = op(store, first.id)
    assert row.priority == 5 and row.not_before < later  # the request asked for sooner
    with pytest.raises(queue.QueueError, match="unknown operation kind"):
        queue.enqueue(store, "explode", c)
    with pytest.raises(queue.QueueError, match="expires_at"):
        queue.enqueue(store, "verify", c, not_before=later, expires_at=later)


def test_claim_orders_by_priority_and_holds_one_per_credential(store):
    a, b, c = creds(store, 3)
    low = queue.enqueue(store, "change", a, priority=200).id
    high = queue.enqueue(store, "verify", b, priority=1).id
    same_cred = queue.enqueue(store, "verify", a, priority=50).id
    future = queue.enqueue(store, "change", c, not_before=utcnow() + timedelta(hours=1)).id

    batch = queue.claim(store, "x", 10)

    ids = [o.id for o in batch]
    assert ids[0] == high and future not in ids
    assert len({o.credential_id for o in batch}) == len(batch)  # one per credential
    assert len({same_cred, low} & set(ids)) == 1
    # the other operation of credential a waits while one of a's runs
    assert queue.claim(store, "y", 10) == []
    for o in batch:
        assert queue.complete(store, o.id, "x")
    [nxt] = queue.claim(store, "y", 10)
    assert nxt.id in {same_cred, low} and nxt.attempts == 1
    assert nxt.lease_owner == "y" and nxt.lease_expires_at > utcnow()


def test_running_unique_index_refuses_two_running_per_credential(store):
    [c] = creds(store, 1)
    with Session(store) as db:
        db.add(Operation(kind="change", credential_id=c, state="running"))
        db.commit()
        db.add(Operation(kind="verify", credential_id=c, state="running"))
        with pytest.raises(sa.exc.IntegrityError):
            db.commit()


def test_expired_lease_is_reclaimed_and_fencing_rejects_the_old_owner(store):
    [c] = creds(store, 1)
    op_id = queue.enqueue(store, "change", c).id
    [claimed] = queue.claim(store, "dead", 1, lease_s=30)
    assert queue.claim(store, "other", 1) == []  # lease live
    assert queue.renew(store, [op_id], "dead", 30) == {op_id}
    later = utcnow() + timedelta(seconds=120)
    [again] = queue.claim(store, "other", 1, now=later)
    assert again.id == op_id and again.attempts == 2 and again.lease_owner == "other"
    # the dead owner cannot finish or renew what it no longer holds
    assert queue.complete(store, op_id, "dead") is False
    assert queue.renew(store, [op_id], "dead") == set()
    assert queue.complete(store, op_id, "other") is True
    assert op(store, op_id).state == "succeeded"


def test_hold_fences_writes_by_owner_and_claim_epoch(store):
    [c] = creds(store, 1)
    op_id = queue.enqueue(store, "change", c).id
    [first] = queue.claim(store, "exec-a", 1, lease_s=30)
    later = utcnow() + timedelta(seconds=120)
    # the same executor re-claims its own expired operation (another pipeline thread)
    [second] = queue.claim(store, "exec-a", 1, now=later)
    assert second.lease_epoch == first.lease_epoch + 1
    with Session(store) as db:
        assert queue.hold(db, {op_id: first.lease_epoch}, "exec-a", step="applied") == {}
        assert queue.hold(db, {op_id: second.lease_epoch}, "exec-b") == {}
        held = queue.hold(db, {op_id: second.lease_epoch}, "exec-a", step="applied")
        assert list(held) == [op_id] and held[op_id].step == "applied"
        db.commit()
    # a lease about to run out does not allow acting on a target
    with Session(store) as db:
        assert queue.hold(db, {op_id: second.lease_epoch}, "exec-a", min_lease_s=10_000) == {}
    assert queue.renew(store, [op_id], "exec-a", epochs={op_id: first.lease_epoch}) == set()


def test_release_expired_leases_requeues_with_step_kept(store):
    [c] = creds(store, 1)
    op_id = queue.enqueue(store, "change", c).id
    queue.claim(store, "dead", 1, lease_s=1)
    with Session(store) as db:
        row = db.get(Operation, op_id)
        row.step = "applied"
        db.add(row)
        db.commit()
    released = queue.release_expired_leases(store, now=utcnow() + timedelta(seconds=10))
    assert released == [queue.ReleasedLease(id=op_id, kind="change", credential_id=c,
                                            owner="dead", step="applied")]
    row = op(store, op_id)
    assert row.state == "queued" and row.step == "applied" and "lost its lease" in row.error


def test_fail_retry_with_backoff_until_max_attempts(store):
    [c] = creds(store, 1)
    op_id = queue.enqueue(store, "verify", c, max_attempts=2).id
    queue.claim(store, "x", 1)
    assert queue.fail(store, op_id, "x", "device d unreachable", retryable=True)
    row = op(store, op_id)
    assert row.state == "failed" and row.retryable and row.not_before > utcnow()
    assert queue.retry_failed(store) == []  # backoff not over
    soon = row.not_before + timedelta(seconds=1)
    assert queue.retry_failed(store, now=soon) == [op_id]
    assert op(store, op_id).state == "queued"
    queue.claim(store, "x", 1, now=soon)
    queue.fail(store, op_id, "x", "still unreachable", retryable=True)
    row = op(store, op_id)
    assert row.attempts == 2 and row.state == "failed" and not row.retryable  # limit reached
    assert queue.retry_failed(store, now=soon + timedelta(days=1)) == []
    assert queue.backoff(1) == timedelta(seconds=30) and queue.backoff(3) == timedelta(seconds=120)
    assert queue.backoff(30) == timedelta(hours=1)


def test_cancel_expired_says_so(store):
    a, b = creds(store, 2)
    now = utcnow()
    stale = queue.enqueue(store, "change", a, expires_at=now + timedelta(seconds=5)).id
    fresh = queue.enqueue(store, "change", b, expires_at=now + timedelta(hours=5)).id
    later = now + timedelta(minutes=1)
    assert queue.claim(store, "x", 10, now=later)[0].id == fresh  # expired ones never run
    cancelled = queue.cancel_expired(store, now=later)
    assert [c.id for c in cancelled] == [stale]
    row = op(store, stale)
    assert row.state == "cancelled" and row.error.startswith("expired: not started before")
    with Session(store) as db:
        assert db.exec(select(AuditLog).where(AuditLog.action == "operation.expired")).first()
    assert queue.cancel(store, fresh) is False  # running: not cancellable


def test_concurrent_claims_on_sqlite_never_share_an_operation(store):
    ids = creds(store, 300)
    queue.enqueue_many(store, [{"kind": "verify", "credential_id": c} for c in ids])
    got: list[list[int]] = []

    def worker(name):
        mine = []
        while batch := queue.claim(store, name, 7):
            mine += [o.id for o in batch]
            for o in batch:
                queue.complete(store, o.id, name)
        got.append(mine)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [i for mine in got for i in mine]
    assert len(flat) == 300 and len(set(flat)) == 300
    assert queue.counts(store) == {"succeeded": 300}


def test_serve_picks_up_work_queued_while_it_polls(store):
    from pamflow.operations import executor

    with Session(store) as db:
        dev = Device(name="svc", address="10.0.0.9")
        db.add(dev)
        db.commit()
        dev_id = dev.id
    ran: list[int] = []

    def record(ctx, ops):
        with Session(ctx.engine) as db:
            for row in queue.held_many(db, [o.id for o in ops], ctx.owner).values():
                ran.append(row.id)
                queue.mark_succeeded(db, row)
            db.commit()

    executor.register_handler("discovery", record)
    idle, stop = threading.Event(), threading.Event()
    results: list[executor.ServeSummary] = []
    try:
        worker = threading.Thread(target=lambda: results.append(executor.serve(
            lifetime_s=30, poll_s=0.05, engine=store, kinds=["discovery"],
            on_idle=idle.set, stop=stop)))
        worker.start()
        assert idle.wait(10)  # polling an empty queue
        ids = [r.id for r in queue.enqueue_many(store, [{"kind": "discovery", "device_id": dev_id}
                                                        for _ in range(5)])]
        deadline = threading.Event()
        for _ in range(200):
            if len(ran) == 5:
                break
            deadline.wait(0.05)
        assert sorted(ran) == sorted(ids)  # picked up while serving, each once
    finally:
        stop.set()
        worker.join(40)
        executor.HANDLERS.pop("discovery", None)
    # an instance ends by itself when its lifetime is over
    short = executor.serve(lifetime_s=0.3, poll_s=0.05, engine=store, kinds=["verify"])
    assert short.claimed == 0 and short.polls >= 1
    [result] = results
    assert result.claimed == 5 and result.succeeded == 5
