"""The operation queue: enqueue, claim under a lease, renew, complete, fail, retry, cancel.

Operations are rows of the ``operation`` table. The rules:

- **Enqueue coalesces.** A second *queued* operation of the same kind for the same
  credential is not added: ``enqueue`` returns the queued one (its priority raised and its
  not-before brought forward when the new request asks for that). A partial unique index
  (``uq_operation_queued_credential_kind``) makes this hold between concurrent writers.
  Different kinds (a verify while a change waits) queue side by side and run one after
  the other, because...
- **One running operation per credential** (partial unique index
  ``uq_operation_running_credential``): a claim never takes an operation whose credential
  already has a running one, nor two for one credential in a batch.
- **Claims take a lease.** PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``, so N
  executors on N machines each take different rows. SQLite: the claim runs inside
  ``BEGIN IMMEDIATE``, which serialises claimers. The owner renews its lease while it
  works; an operation whose lease expired (its executor died) is claimable again, and the
  rotation protocol resumes it from the recorded step (crash recovery).
- **Failures** set ``retryable`` when trying later may succeed; the Retry robot re-queues
  those with exponential backoff until ``max_attempts``; expired queued operations are
  cancelled by their own robot, saying so.

After an enqueue commits, a Prefect event ``pam.operation.queued`` is emitted (best
effort; ids only) so the executor deployment's trigger can start an instance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit
from ..errors import PamflowError
from ..models import Credential, Device, Operation, OperationKind, OperationState, row_id, utcnow

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 120.0
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0
ACTIVE_STATES = (OperationState.queued, OperationState.running)


class QueueError(PamflowError, ValueError):
    """A request the queue cannot take (unknown kind, bad dates...)."""


@dataclass(frozen=True)
class Enqueued:
    """What ``enqueue`` did: the operation id and whether it joined an existing one."""

    id: int
    coalesced: bool


def _engine(engine: Engine | None) -> Engine:
    if engine is None:
        from ..db import store

        return store()
    return engine


def backoff(attempts: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS
            ) -> timedelta:
    """Delay before retry number ``attempts`` (1, 2, 3...): base * 2^(attempts-1), capped."""
    return timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


# ----------------------------------------------------------------------------- enqueue
def enqueue(
    engine: Engine | None,
    kind: str,
    credential_id: int | None = None,
    *,
    device_id: int | None = None,
    priority: int = 100,
    not_before: datetime | None = None,
    expires_at: datetime | None = None,
    max_attempts: int = 5,
    requested_by: str = "system",
    reason: str | None = None,
    parameters: dict | None = None,
    emit: bool = True,
) -> Enqueued:
    """Queue one operation (or join the queued one of the same kind for the credential)."""
    [done] = enqueue_many(engine, [dict(kind=kind, credential_id=credential_id, device_id=device_id,
                                        priority=priority, not_before=not_before,
                                        expires_at=expires_at, max_attempts=max_attempts,
                                        reason=reason, parameters=parameters)],
                          requested_by=requested_by, emit=emit)
    return done


def enqueue_many(engine: Engine | None, items: Iterable[dict], *, requested_by: str = "system",
                 emit: bool = True) -> list[Enqueued]:
    """Queue many operations in one transaction; each item holds ``enqueue``'s arguments.

    Validation, coalescing and the insert are done in bulk; when a concurrent writer
    queued the same work meanwhile (unique index), it falls back to one item at a time.
    """
    engine = _engine(engine)
    now = utcnow()
    items = list(items)
    try:
        with Session(engine, expire_on_commit=False) as db:
            results = _enqueue_bulk(db, items, requested_by, now)
            db.commit()
    except sa.exc.IntegrityError:
        with Session(engine, expire_on_commit=False) as db:
            results = [_enqueue_one(db, item, requested_by, now) for item in items]
            db.commit()
    fresh = [r.id for r in results if not r.coalesced]
    if emit and fresh:
        emit_queued(fresh, requested_by=requested_by)
    return results


def _enqueue_bulk(db: Session, items: list[dict], requested_by: str, now: datetime
                  ) -> list[Enqueued]:
    cred_ids = {i["credential_id"] for i in items if i.get("credential_id") is not None}
    dev_ids = {i["device_id"] for i in items if i.get("device_id") is not None}
    known_creds = set(db.exec(select(col(Credential.id)).where(col(Credential.id).in_(cred_ids)))) \
        if cred_ids else set()
    known_devs = set(db.exec(select(col(Device.id)).where(col(Device.id).in_(dev_ids)))) if dev_ids else set()
    queued: dict[tuple[int, str], Operation] = {}
    if cred_ids:
        for op in db.exec(select(Operation).where(col(Operation.credential_id).in_(cred_ids),
                                                  col(Operation.state) == OperationState.queued)):
            if op.credential_id is not None:
                queued[(op.credential_id, op.kind)] = op
    planned: list[tuple[Operation, bool]] = []
    for item in items:
        kind, credential_id, not_before, expires_at, priority = _validated(item, now)
        if credential_id is not None and credential_id not in known_creds:
            raise QueueError(f"{kind}: unknown credential {credential_id}")
        if item.get("device_id") is not None and item["device_id"] not in known_devs:
            raise QueueError(f"{kind}: unknown device {item['device_id']}")
        existing = queued.get((credential_id, kind)) if credential_id is not None else None
        if existing is not None:
            existing.priority = min(existing.priority, priority)
            existing.not_before = min(existing.not_before, not_before)
            if existing.expires_at is not None and (expires_at is None
                                                    or expires_at > existing.expires_at):
                existing.expires_at = expires_at
            db.add(existing)
            planned.append((existing, True))
            continue
        op = _new_operation(item, kind, credential_id, not_before, expires_at, priority,
                            requested_by)
        db.add(op)
        if credential_id is not None:
            queued[(credential_id, kind)] = op
        planned.append((op, False))
    db.flush()
    return [Enqueued(row_id(op), coalesced) for op, coalesced in planned]


def _validated(item: dict, now: datetime) -> tuple:
    kind = str(item.get("kind"))
    if kind not in {k.value for k in OperationKind}:
        raise QueueError(f"unknown operation kind {kind!r} "
                         f"(one of {', '.join(k.value for k in OperationKind)})")
    not_before = item.get("not_before") or now
    expires_at = item.get("expires_at")
    if expires_at is not None and expires_at <= not_before:
        raise QueueError("expires_at must be later than not_before")
    return kind, item.get("credential_id"), not_before, expires_at, int(item.get("priority", 100))


def _new_operation(item: dict, kind: str, credential_id: int | None, not_before: datetime,
                   expires_at: datetime | None, priority: int, requested_by: str) -> Operation:
    return Operation(kind=kind, credential_id=credential_id, device_id=item.get("device_id"),
                     priority=priority, not_before=not_before, expires_at=expires_at,
                     max_attempts=int(item.get("max_attempts", 5)),
                     requested_by=item.get("requested_by") or requested_by,
                     reason=item.get("reason"), parameters=dict(item.get("parameters") or {}))


def _enqueue_one(db: Session, item: dict, requested_by: str, now: datetime) -> Enqueued:
    kind, credential_id, not_before, expires_at, priority = _validated(item, now)
    if credential_id is not None and db.get(Credential, credential_id) is None:
        raise QueueError(f"{kind}: unknown credential {credential_id}")
    if item.get("device_id") is not None and db.get(Device, item["device_id"]) is None:
        raise QueueError(f"{kind}: unknown device {item['device_id']}")
    if credential_id is not None:
        existing = _queued_for(db, credential_id, kind)
        if existing is not None:
            return _coalesce(db, existing, priority, not_before, expires_at)
    op = _new_operation(item, kind, credential_id, not_before, expires_at, priority, requested_by)
    try:
        with db.begin_nested():
            db.add(op)
            db.flush()
    except sa.exc.IntegrityError:
        # a concurrent writer queued the same kind for this credential first: join it
        existing = _queued_for(db, credential_id, kind)
        if existing is None:
            raise
        return _coalesce(db, existing, priority, not_before, expires_at)
    return Enqueued(row_id(op), False)


def _queued_for(db: Session, credential_id: int, kind: str) -> Operation | None:
    return db.exec(select(Operation).where(col(Operation.credential_id) == credential_id,
                                           col(Operation.kind) == kind,
                                           col(Operation.state) == OperationState.queued)).first()


def _coalesce(db: Session, op: Operation, priority: int, not_before: datetime,
              expires_at: datetime | None) -> Enqueued:
    op.priority = min(op.priority, priority)
    op.not_before = min(op.not_before, not_before)
    if op.expires_at is not None and (expires_at is None or expires_at > op.expires_at):
        op.expires_at = expires_at
    db.add(op)
    db.flush()
    return Enqueued(row_id(op), True)


def emit_queued(operation_ids: Sequence[int], *, requested_by: str = "system") -> bool:
    """Best effort: tell Prefect that operations were queued (ids only, never a secret).

    Skipped when no Prefect API is configured or ``PAMFLOW_EMIT_EVENTS=0``; any failure is
    logged and swallowed: the queue row is what counts, and the executor's schedule and
    polling pick it up anyway.
    """
    if not operation_ids or os.environ.get("PAMFLOW_EMIT_EVENTS", "1") == "0":
        return False
    if not os.environ.get("PREFECT_API_URL"):
        return False
    from .. import events

    first = operation_ids[0]
    try:
        status = events.post_events([events.event(
            "pam.operation.queued",
            {"prefect.resource.id": f"pam.operation.{first}",
             "prefect.resource.name": f"operation {first}"},
            {"operation_ids": list(operation_ids)[:100], "count": len(operation_ids),
             "requested_by": requested_by})], timeout=2.0)
    except Exception as exc:  # noqa: BLE001 - best effort by design
        log.warning("could not emit pam.operation.queued for %d operation(s): %s",
                    len(operation_ids), type(exc).__name__)
        return False
    if status >= 300:
        log.warning("Prefect refused pam.operation.queued for %d operation(s): HTTP %s",
                    len(operation_ids), status)
        return False
    return True


# ----------------------------------------------------------------------------- claim
_CLAIMABLE = """
    (o.state = 'queued' AND o.not_before <= :now AND (o.expires_at IS NULL OR o.expires_at > :now)
     AND (o.credential_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM operation r WHERE r.credential_id = o.credential_id
          AND r.state = 'running' AND r.id <> o.id)))
    OR (o.state = 'running' AND o.lease_expires_at < :now)
"""


def claim(engine: Engine | None, owner: str, limit: int = 100, *,
          lease_s: float = DEFAULT_LEASE_SECONDS, kinds: Sequence[str] | None = None,
          now: datetime | None = None) -> list[Operation]:
    """Take up to ``limit`` runnable operations under a lease for ``owner``.

    Runnable: queued, due and not expired, and no other operation of its credential is
    running; or running with an expired lease (its executor died: reclaimed). Lower
    priority first, then oldest. Each claim counts one attempt. Returns detached rows.
    """
    engine = _engine(engine)
    now = now or utcnow()
    kind_filter = ""
    params: dict = {"now": now, "limit": max(1, int(limit)) * 2}
    if kinds:
        names = [f":k{i}" for i in range(len(kinds))]
        kind_filter = f" AND o.kind IN ({', '.join(names)})"
        params.update({f"k{i}": k for i, k in enumerate(kinds)})
    postgres = engine.dialect.name == "postgresql"
    lock = " FOR UPDATE OF o SKIP LOCKED" if postgres else ""
    query = sa.text(
        f"SELECT o.id, o.credential_id FROM operation o WHERE (({_CLAIMABLE})){kind_filter} "
        f"ORDER BY o.priority, o.not_before, o.id LIMIT :limit{lock}")
    lease_until = now + timedelta(seconds=lease_s)
    with engine.connect() as conn:
        if not postgres:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            tx = None
        else:
            tx = conn.begin()
        try:
            rows = conn.execute(query, params).all()
            chosen: list[int] = []
            seen: set[int] = set()
            for op_id, credential_id in rows:
                if credential_id is not None:
                    if credential_id in seen:
                        continue
                    seen.add(credential_id)
                chosen.append(op_id)
                if len(chosen) >= limit:
                    break
            taken = _mark_running(conn, chosen, owner, now, lease_until, postgres)
            if tx is not None:
                tx.commit()
            else:
                conn.exec_driver_sql("COMMIT")
        except BaseException:
            if tx is not None:
                tx.rollback()
            else:
                conn.exec_driver_sql("ROLLBACK")
            raise
    if not taken:
        return []
    with Session(engine, expire_on_commit=False) as db:
        ops = db.exec(select(Operation).where(col(Operation.id).in_(taken))).all()
        for op in ops:
            db.expunge(op)
    order = {op_id: i for i, op_id in enumerate(taken)}
    return sorted(ops, key=lambda o: order[row_id(o)])


_MARK = sa.text(
    "UPDATE operation SET state = 'running', lease_owner = :owner, lease_expires_at = :lease, "
    "lease_epoch = lease_epoch + 1, attempts = attempts + 1, "
    "started_at = COALESCE(started_at, :now), error = NULL WHERE id = :id")


def _mark_running(conn: sa.Connection, ids: list[int], owner: str, now: datetime,
                  lease: datetime, postgres: bool) -> list[int]:
    if not ids:
        return []
    params = [{"id": i, "owner": owner, "lease": lease, "now": now} for i in ids]
    if not postgres:  # serialised: nobody else can be marking rows right now
        conn.execute(_MARK, params)
        return ids
    try:
        with conn.begin_nested():
            conn.execute(_MARK, params)
        return ids
    except sa.exc.IntegrityError:
        # another executor started an operation of one of these credentials meanwhile
        taken: list[int] = []
        for op_id, p in zip(ids, params, strict=True):
            try:
                with conn.begin_nested():
                    conn.execute(_MARK, p)
                taken.append(op_id)
            except sa.exc.IntegrityError:
                continue
        return taken


def renew(engine: Engine | None, ids: Sequence[int], owner: str,
          lease_s: float = DEFAULT_LEASE_SECONDS, epochs: Mapping[int, int] | None = None
          ) -> set[int]:
    """Extend ``owner``'s lease on ``ids``; returns the ids it still holds.

    With ``epochs`` (operation id -> claim epoch) an operation re-claimed since, even by
    the same owner, counts as lost.
    """
    if not ids:
        return set()
    engine = _engine(engine)
    lease = utcnow() + timedelta(seconds=lease_s)
    held_now = (col(Operation.id).in_(list(ids)), col(Operation.state) == OperationState.running,
                col(Operation.lease_owner) == owner)
    with engine.begin() as conn:
        conn.execute(sa.update(Operation).where(*held_now).values(lease_expires_at=lease))
        rows = conn.execute(sa.select(col(Operation.id), col(Operation.lease_epoch)).where(*held_now)).all()
    return {op_id for op_id, epoch in rows if epochs is None or epochs.get(op_id) == epoch}


# ----------------------------------------------------------------------------- fencing
def hold(db: Session, claims: Mapping[int, int], owner: str | None, *, step: str | None = None,
         min_lease_s: float | None = None, now: datetime | None = None) -> dict[int, Operation]:
    """Fence a write: the operations ``owner`` still holds under the epochs it claimed them with.

    ``claims`` maps operation id -> the ``lease_epoch`` its claim returned. For each, one
    conditional UPDATE (state running, same owner, same epoch) records ``step`` when given;
    the UPDATE also takes the row's write lock, so a concurrent claim waits for this
    transaction, and everything the caller writes in it is fenced by the same check. With
    ``min_lease_s`` the lease must also have at least that many seconds left (a step that
    acts on a target must not start on a lease about to run out). Operations not returned
    were lost: re-claimed by another executor (or by a later claim of this one), released
    by recovery, or closed; the caller must not write anything about them.

    ``owner=None`` (a caller outside the executor) skips the owner and epoch checks.
    """
    if not claims:
        return {}
    now = now or utcnow()
    held_ids: list[int] = []
    for op_id, epoch in claims.items():
        stmt = sa.update(Operation).where(col(Operation.id) == op_id,
                                          col(Operation.state) == OperationState.running)
        if owner is not None:
            stmt = stmt.where(col(Operation.lease_owner) == owner, col(Operation.lease_epoch) == epoch)
        if min_lease_s is not None:
            stmt = stmt.where(col(Operation.lease_expires_at) > now + timedelta(seconds=min_lease_s))
        stmt = stmt.values(step=step) if step else stmt.values(lease_epoch=col(Operation.lease_epoch))
        if db.exec(stmt.execution_options(synchronize_session=False)).rowcount:
            held_ids.append(op_id)
    if not held_ids:
        return {}
    # populate_existing: the UPDATEs above bypassed the session's identity map
    rows = db.exec(select(Operation).where(col(Operation.id).in_(held_ids))
                   .execution_options(populate_existing=True)).all()
    return {row_id(row): row for row in rows}


def release(db: Session, ops: Iterable[Operation], reason: str) -> int:
    """Give held operations back to the queue untouched (a stopping executor): queued again,
    their claim not counted as an attempt. The caller fenced them with ``hold``."""
    n = 0
    for op in ops:
        op.state = OperationState.queued
        op.lease_owner = None
        op.lease_expires_at = None
        op.attempts = max(0, op.attempts - 1)
        op.step = None
        op.error = reason
        db.add(op)
        n += 1
    return n


# ----------------------------------------------------------------------------- finish
def held(db: Session, op_id: int, owner: str | None) -> Operation | None:
    """The operation if it is running under ``owner``'s lease (None: the lease was lost)."""
    op = db.get(Operation, op_id)
    if op is None or op.state != OperationState.running:
        return None
    if owner is not None and op.lease_owner != owner:
        return None
    return op


def held_many(db: Session, ids: Iterable[int], owner: str | None) -> dict[int, Operation]:
    """``held`` for many operations in one query: id -> operation still held by ``owner``."""
    ids = list(ids)
    if not ids:
        return {}
    q = select(Operation).where(col(Operation.id).in_(ids), col(Operation.state) == OperationState.running)
    if owner is not None:
        q = q.where(col(Operation.lease_owner) == owner)
    return {row_id(op): op for op in db.exec(q)}


def mark_succeeded(db: Session, op: Operation, result: dict | None = None,
                   step: str | None = None) -> None:
    """Close ``op`` as succeeded in ``db``'s transaction (the caller commits)."""
    now = utcnow()
    op.state = OperationState.succeeded
    op.result = {**(op.result or {}), **(result or {})}
    op.step = step or op.step
    op.error = None
    op.retryable = False
    op.finished_at = now
    op.lease_owner = None
    op.lease_expires_at = None
    db.add(op)


def mark_failed(db: Session, op: Operation, error: str, *, retryable: bool = False,
                result: dict | None = None, step: str | None = None) -> None:
    """Close ``op`` as failed; a retryable one becomes due for Retry after a backoff."""
    now = utcnow()
    op.state = OperationState.failed
    op.error = error[:2000]
    op.result = {**(op.result or {}), **(result or {})}
    op.step = step or op.step
    op.retryable = bool(retryable) and op.attempts < op.max_attempts
    if op.retryable:
        op.not_before = now + backoff(op.attempts)
    op.finished_at = now
    op.lease_owner = None
    op.lease_expires_at = None
    db.add(op)


def complete(engine: Engine | None, op_id: int, owner: str | None, result: dict | None = None
             ) -> bool:
    """Mark one held operation succeeded; False when ``owner`` no longer holds it."""
    with Session(_engine(engine), expire_on_commit=False) as db:
        op = held(db, op_id, owner)
        if op is None:
            return False
        mark_succeeded(db, op, result)
        db.commit()
        return True


def fail(engine: Engine | None, op_id: int, owner: str | None, error: str, *,
         retryable: bool = False) -> bool:
    """Mark one held operation failed; False when ``owner`` no longer holds it."""
    with Session(_engine(engine), expire_on_commit=False) as db:
        op = held(db, op_id, owner)
        if op is None:
            return False
        mark_failed(db, op, error, retryable=retryable)
        db.commit()
        return True


SECRET_KINDS = (OperationKind.change, OperationKind.activate, OperationKind.reconcile)


def retry_failed(engine: Engine | None = None, *, limit: int = 1000,
                 now: datetime | None = None) -> list[int]:
    """Re-queue failed, retryable operations whose backoff has passed (the Retry robot).

    Not re-queued, and no longer retryable ("superseded"): one already queued for the same
    credential and kind makes the retry redundant; a change whose credential's password
    was changed (or settled by reconciliation) after the failure has nothing left to do.
    Left for later (still retryable): an operation whose credential has a secret-changing
    operation queued or running, or is waiting for reconciliation (a pending secret, or
    status unverified) — retrying then could rotate a password twice.
    """
    now = now or utcnow()
    requeued: list[int] = []
    with Session(_engine(engine), expire_on_commit=False) as db:
        ops = db.exec(select(Operation).where(
            col(Operation.state) == OperationState.failed, col(Operation.retryable) == sa.true(),
            col(Operation.attempts) < col(Operation.max_attempts), col(Operation.not_before) <= now)
            .order_by(col(Operation.priority), col(Operation.not_before)).limit(limit)).all()
        cred_ids = {op.credential_id for op in ops if op.credential_id is not None}
        creds = {c.id: c for c in db.exec(select(Credential).where(
            col(Credential.id).in_(cred_ids)))} if cred_ids else {}
        busy = set(db.exec(select(col(Operation.credential_id)).where(
            col(Operation.credential_id).in_(cred_ids), col(Operation.kind).in_(SECRET_KINDS),
            col(Operation.state).in_(ACTIVE_STATES)))) if cred_ids else set()
        for op in ops:
            cred = creds.get(op.credential_id) if op.credential_id is not None else None
            why = _superseded(db, op, cred)
            if why:
                op.retryable = False
                op.result = {**(op.result or {}), "superseded": why}
                db.add(op)
                continue
            if cred is not None and (op.credential_id in busy or cred.pending_secret
                                     or cred.status == "unverified"):
                continue  # settle first; retried on a later pass if still needed
            op.state = OperationState.queued
            op.finished_at = None
            op.retryable = False
            op.result = {**(op.result or {}), "last_error": op.error}
            db.add(op)
            db.flush()
            requeued.append(row_id(op))
            if op.credential_id is not None and op.kind in SECRET_KINDS:
                busy.add(op.credential_id)
        if requeued:
            audit.record(db, "robot:operation-executor-retry", "operation.retry", "operation",
                         None, {"operation_ids": requeued[:200], "count": len(requeued)})
        db.commit()
    return requeued


def _superseded(db: Session, op: Operation, cred: Credential | None) -> str | None:
    if op.credential_id is None:
        return None
    if cred is None:
        return "the credential no longer exists"
    if _queued_for(db, op.credential_id, op.kind) is not None:
        return f"a {op.kind} is queued for the credential already"
    if op.kind in (OperationKind.change, OperationKind.activate) and cred.last_changed_at \
            and op.finished_at and cred.last_changed_at > op.finished_at:
        return "the password was changed after this operation failed"
    return None


def cancel(engine: Engine | None, op_id: int, *, reason: str = "cancelled",
           actor: str = "system") -> bool:
    """Cancel a queued (or failed-awaiting-retry) operation; running ones cannot be."""
    with Session(_engine(engine), expire_on_commit=False) as db:
        op = db.get(Operation, op_id)
        if op is None or op.state not in (OperationState.queued, OperationState.failed):
            return False
        op.state = OperationState.cancelled
        op.retryable = False
        op.error = reason
        op.finished_at = utcnow()
        db.add(op)
        audit.record(db, actor, "operation.cancel", "operation", op.id,
                     {"kind": op.kind, "credential_id": op.credential_id, "reason": reason})
        db.commit()
        return True


@dataclass(frozen=True)
class Cancelled:
    """A queued operation cancelled because it expired before it started."""

    id: int
    kind: str
    credential_id: int | None
    expired_at: str


@dataclass(frozen=True)
class ReleasedLease:
    """A running operation whose executor's lease expired, queued again (or superseded)."""

    id: int
    kind: str
    credential_id: int | None
    owner: str | None
    step: str | None


def cancel_expired(engine: Engine | None = None, *, now: datetime | None = None,
                   actor: str = "robot:expired-operation-cancellation") -> list[Cancelled]:
    """Cancel every queued operation past its expiry; returns what was cancelled."""
    now = now or utcnow()
    cancelled: list[Cancelled] = []
    with Session(_engine(engine), expire_on_commit=False) as db:
        ops = db.exec(select(Operation).where(col(Operation.state) == OperationState.queued,
                                              col(Operation.expires_at).is_not(None),
                                              col(Operation.expires_at) <= now)).all()
        for op in ops:
            expires_at = op.expires_at
            if expires_at is None:  # the query asked for an expiry; nothing to cancel without one
                continue
            op.state = OperationState.cancelled
            op.error = (f"expired: not started before {expires_at.isoformat()} "
                        f"(queued {op.created_at.isoformat()}, {op.attempts} attempt(s))")
            op.finished_at = now
            db.add(op)
            cancelled.append(Cancelled(row_id(op), op.kind, op.credential_id, expires_at.isoformat()))
        if cancelled:
            audit.record(db, actor, "operation.expired", "operation", None,
                         {"operation_ids": [c.id for c in cancelled][:200],
                          "count": len(cancelled)})
        db.commit()
    return cancelled


def release_expired_leases(engine: Engine | None = None, *, now: datetime | None = None
                           ) -> list[ReleasedLease]:
    """Put running operations whose lease expired back in the queue (their executor died).

    The step they reached is kept: the protocol resumes from it.
    """
    now = now or utcnow()
    released: list[ReleasedLease] = []
    with Session(_engine(engine), expire_on_commit=False) as db:
        ops = db.exec(select(Operation).where(col(Operation.state) == OperationState.running,
                                              col(Operation.lease_expires_at) < now)).all()
        for op in ops:
            released.append(ReleasedLease(row_id(op), op.kind, op.credential_id, op.lease_owner,
                                          op.step))
            if op.credential_id is not None and _queued_for(db, op.credential_id, op.kind):
                # the same work is queued again already; it settles the credential first
                mark_failed(db, op, f"executor {op.lease_owner} lost its lease at step "
                            f"{op.step or 'claim'}; superseded by a queued {op.kind}")
                continue
            op.state = OperationState.queued
            op.error = f"executor {op.lease_owner} lost its lease at step {op.step or 'claim'}"
            op.lease_owner = None
            op.lease_expires_at = None
            op.not_before = min(op.not_before, now)
            op.expires_at = None  # recovery must not be cancelled as expired
            db.add(op)
        if released:
            audit.record(db, "recovery", "operation.lease_expired", "operation", None,
                         {"operations": [asdict(r) for r in released[:200]],
                          "count": len(released)})
        db.commit()
    return released


def counts(engine: Engine | None = None) -> dict[str, int]:
    """Operations per state."""
    with _engine(engine).connect() as conn:
        rows = conn.execute(sa.select(col(Operation.state), sa.func.count())
                            .group_by(col(Operation.state))).all()
    return {state: n for state, n in rows}


def runnable_count(engine: Engine | None = None, kinds: Sequence[str] | None = None,
                   now: datetime | None = None) -> int:
    """How many operations a claim could take now (cheap: the executor's poll)."""
    now = now or utcnow()
    q = sa.select(sa.func.count()).select_from(Operation).where(sa.or_(
        sa.and_(col(Operation.state) == OperationState.queued, col(Operation.not_before) <= now,
                sa.or_(col(Operation.expires_at).is_(None), col(Operation.expires_at) > now)),
        sa.and_(col(Operation.state) == OperationState.running, col(Operation.lease_expires_at) < now)))
    if kinds:
        q = q.where(col(Operation.kind).in_(list(kinds)))
    with _engine(engine).connect() as conn:
        return int(conn.execute(q).scalar_one())


__all__ = ["Cancelled", "DEFAULT_LEASE_SECONDS", "Enqueued", "QueueError", "ReleasedLease",
           "backoff", "cancel", "cancel_expired", "claim", "complete", "counts", "emit_queued",
           "enqueue", "enqueue_many", "fail", "held", "held_many", "hold", "mark_failed",
           "mark_succeeded", "release", "release_expired_leases", "renew", "retry_failed",
           "runnable_count"]
