"""The protocol's writes to the store, each fenced by the executor's lease: failures, give-
backs, attention flags, and the moves of a secret between pending, current and history."""


from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..errors import PamflowError
from ..models import (
    Credential,
    CredentialHistory,
    CredentialStatus,
    Device,
    Operation,
    OperationKind,
    row_id,
    utcnow,
)
from ..operations import queue as opqueue
from ..vault import Vault
from .work import (
    UNCONFIRMED,
    Context,
    Problem,
    Work,
    _aad,
)

log = logging.getLogger(__name__)


class PromoteRefused(PamflowError):
    """A pending secret was to become current, but the credential has none."""


# ----------------------------------------------------------------------------- store writes
def _notify_failure(db: Session, kind: str, w_ctx: dict, error: str) -> None:
    name = "Error on activation" if kind == OperationKind.activate else "Error on change"
    if kind in (OperationKind.verify, OperationKind.reconcile):
        name = "Error on change"
    notifications.queue(db, name, context={**w_ctx, "error": error})


def _hold(db: Session, ctx: Context, works: Sequence[Work], step: str | None = None,
          min_lease_s: float | None = None) -> dict[int, Operation]:
    """Fence this transaction: the works' operations still held by this executor."""
    return opqueue.hold(db, {w.op_id: w.epoch for w in works}, ctx.owner, step=step,
                        min_lease_s=min_lease_s)


def _advance(db: Session, ctx: Context, works: Sequence[Work], step: str) -> list[Work]:
    """Record ``step`` on the works still held (fenced); the others are dropped."""
    held = _hold(db, ctx, ctx.keep(works), step=step)
    kept = [w for w in works if w.op_id in held]
    for w in kept:
        w.step = step
    _log_lost(ctx, works, held, step)
    return kept


def _log_lost(ctx: Context, works: Sequence[Work], held: dict, step: str) -> None:
    lost = [w.op_id for w in works if w.op_id not in held]
    if lost:
        ctx.lost.update(lost)
        log.warning("%s: lease lost at step %s on operation(s) %s; another executor or "
                    "recovery settles them", ctx.owner, step, lost[:20])


def close_problems(ctx: Context, problems: Sequence[Problem]) -> None:
    """Fail operations that could not start, with a notification and an audit row each.

    A credential whose own data is at fault is flagged for attention: its failure is
    notified once, and the robots queue nothing more for it until it is changed.
    """
    if not problems:
        return
    now = utcnow()
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = opqueue.hold(db, {row_id(p.op): p.op.lease_epoch for p in problems}, ctx.owner)
        creds = _credentials(db, [p.op.credential_id for p in problems
                                  if p.attention and p.op.credential_id is not None])
        for p in problems:
            op = held.get(row_id(p.op))
            if op is None:
                continue
            opqueue.mark_failed(db, op, p.error, retryable=p.retryable,
                                result={"failed_step": "load"})
            context = {"operation_id": op.id, "credential_id": op.credential_id,
                       "device_id": op.device_id, "device": p.device, "account": p.account}
            cred = creds.get(op.credential_id) if p.attention and op.credential_id is not None else None
            if cred is not None:
                already = cred.attention is not None and not _changed_since_attention(db, cred)
                cred.attention, cred.attention_at = p.error[:1000], now
                db.add(cred)  # updated_at stays: attention is cleared by a later change
                context["attention"] = True
                if already:  # the same unchanged data failed again: said once already
                    continue
            _notify_failure(db, op.kind, context, p.error)
            audit.record(db, ctx.actor, f"operation.{op.kind}.failed", "operation", op.id,
                         {**context, "error": p.error})
        db.commit()
    for p in problems:
        log.warning("operation %s failed: %s", p.op.id, p.error)


def _changed_since_attention(db: Session, cred: Credential) -> bool:
    """Was the credential, its device or the device's admin/reconcile credential changed
    after it was flagged for attention?"""
    if cred.attention_at is None:
        return True
    dev = db.get(Device, cred.device_id)
    stamps = [cred.updated_at, dev.updated_at if dev else None]
    for other in (dev.admin_credential_id, dev.reconcile_credential_id) if dev else ():
        row = db.get(Credential, other) if other else None
        stamps.append(row.updated_at if row else None)
    return any(s is not None and s > cred.attention_at for s in stamps)


def attention_cleared():
    """SQL: the credential is not flagged, or something changed after it was (join Device)."""
    admin = aliased(Credential)
    recon = aliased(Credential)
    changed_admin = sa.select(admin.updated_at).where(
        admin.id == col(Device.admin_credential_id)).scalar_subquery()
    changed_recon = sa.select(recon.updated_at).where(
        recon.id == col(Device.reconcile_credential_id)).scalar_subquery()
    return sa.or_(col(Credential.attention).is_(None),
                  col(Credential.attention_at) < col(Credential.updated_at),
                  col(Credential.attention_at) < col(Device.updated_at),
                  col(Credential.attention_at) < changed_admin,
                  col(Credential.attention_at) < changed_recon)


@dataclass(frozen=True)
class Failure:
    """A work item that failed at ``step``: its error (device, account and step named, no
    secret), whether the target may have changed the password (``outcome_unknown``), and
    whether trying later may work (``retryable``; an unknown outcome always may)."""

    work: Work
    error: str
    outcome_unknown: bool
    step: str
    retryable: bool = False


def _fail_works(ctx: Context, failures: Sequence[Failure]) -> None:
    """Close failed work.

    Known not applied: pending cleared, status kept. Unknown: the credential is unverified
    with its pending secret, and the operation is retryable (reconciliation settles it).
    Only operations this executor still holds are written (fenced).
    """
    if not failures:
        return
    works = [f.work for f in failures]
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, works)
        creds = _credentials(db, [w.credential_id for w in works if w.op_id in held])
        for f in failures:
            w = f.work
            op = held.get(w.op_id)
            if op is None:
                continue
            cred = creds.get(w.credential_id)
            if cred is not None:
                if f.outcome_unknown:
                    cred.status = CredentialStatus.unverified
                    cred.status_detail = f"{w.kind} operation {w.op_id}: {f.error}"[:500]
                elif cred.pending_operation_id == w.op_id:
                    _clear_pending(cred)  # known not applied: the write-ahead is void
                cred.updated_at = utcnow()
                db.add(cred)
            # Operation.step stays the last protocol step reached; where it failed is in
            # the error text and the result
            opqueue.mark_failed(db, op, f.error, retryable=f.outcome_unknown or f.retryable,
                                result={"outcome_unknown": f.outcome_unknown,
                                        "failed_step": f.step})
            _notify_failure(db, w.kind, w.context(), f.error)
            audit.record(db, ctx.actor, f"operation.{w.kind}.failed", "credential",
                         w.credential_id, {**w.context(), "step": f.step, "error": f.error,
                                           "outcome_unknown": f.outcome_unknown})
        db.commit()
    _log_lost(ctx, works, held, "fail")
    for f in failures:
        if f.work.op_id in held:
            log.warning("operation %s failed: %s", f.work.op_id, f.error)


def _release(ctx: Context, works: Sequence[Work], why: str) -> None:
    """Give operations back to the queue untouched (stopping before the target was touched):
    a pending secret this operation stored is void and cleared."""
    if not works:
        return
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, works)
        creds = _credentials(db, [w.credential_id for w in works if w.op_id in held])
        for w in works:
            cred = creds.get(w.credential_id)
            if w.op_id in held and cred is not None and cred.pending_operation_id == w.op_id:
                _clear_pending(cred)
                db.add(cred)
        n = opqueue.release(db, held.values(), why)
        db.commit()
    if n:
        log.info("%s: gave back %d operation(s) not started on a target: %s", ctx.owner, n, why)


def _credentials(db: Session, ids: Iterable[int]) -> dict[int, Credential]:
    ids = list(set(ids))
    if not ids:
        return {}
    return {row_id(c): c for c in db.exec(select(Credential).where(col(Credential.id).in_(ids)))}


def _clear_pending(cred: Credential) -> None:
    cred.pending_secret = None
    cred.pending_operation_id = None
    cred.pending_since = None


def _set_aside(db: Session, cred: Credential, box: Vault, now: datetime) -> None:
    """Drop an unconfirmed pending secret into the history instead of forgetting it.

    Reconciliation found that it does not log in, so it is not the password now; but an
    executor that lost its lease might still have been applying it. Kept (re-sealed for
    the history field) and tried again by reconciliation, it can never become a lost
    password.
    """
    if cred.pending_secret:
        db.add(CredentialHistory(
            credential_id=row_id(cred), version=cred.secret_version + 1,
            secret=box.reseal(cred.pending_secret, _aad(cred, "pending"), _aad(cred, "history")),
            retired_at=now, reason=f"{UNCONFIRMED} of operation {cred.pending_operation_id}"))
    _clear_pending(cred)


def _retire_current(db: Session, cred: Credential, box: Vault, reason: str, now: datetime) -> None:
    """The current secret goes to history (re-sealed for the history field)."""
    if cred.secret:
        db.add(CredentialHistory(credential_id=row_id(cred), version=cred.secret_version,
                                 secret=box.reseal(cred.secret, _aad(cred, "secret"),
                                                   _aad(cred, "history")),
                                 retired_at=now, reason=reason))


def _promote(db: Session, cred: Credential, reason: str, now: datetime, box: Vault) -> None:
    """Pending becomes current; the previous current goes to history; a candidate is void."""
    pending = cred.pending_secret
    if pending is None:
        raise PromoteRefused(f"account {cred.username} (credential {cred.id}) has no pending secret "
                             f"to promote ({reason}, step promote)")
    _retire_current(db, cred, box, reason, now)
    cred.secret = box.reseal(pending, _aad(cred, "pending"), _aad(cred, "secret"))
    cred.secret_version += 1
    cred.candidate_secret = None
    _clear_pending(cred)
    _mark_ok(cred, now)
    cred.last_changed_at = now
    cred.reminder_sent_at = None
    if cred.change_interval_days:
        cred.expires_at = now + timedelta(days=cred.change_interval_days)


def _mark_ok(cred: Credential, now: datetime, detail: str | None = None) -> None:
    cred.status = CredentialStatus.ok
    cred.status_detail = detail
    cred.last_verified_at = now
    cred.updated_at = now
    cred.attention = cred.attention_at = None
