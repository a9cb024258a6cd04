"""Reconciliation: which secret is the real one (pending, current, a set-aside pending, or set
through the reconcile account), the password check and the verification of imported
candidates; which credentials recovery must settle."""


from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..models import (
    Credential,
    CredentialStatus,
    Device,
    Operation,
    OperationKind,
    OperationState,
    utcnow,
)
from ..operations import queue as opqueue
from ..targets.base import Change, TargetError
from ..vault import VaultError
from .store import (
    Failure,
    _credentials,
    _fail_works,
    _hold,
    _log_lost,
    _mark_ok,
    _notify_failure,
    _promote,
    _release,
    _retire_current,
    _set_aside,
    attention_cleared,
    close_problems,
)
from .work import (
    Context,
    Work,
    _aad,
    _aad_of,
    _describe,
    _outcome_unknown,
    _parallel,
    _verify,
    load,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- settle
SETTLED = ("pending", "current", "reconcile")


def _try_secrets(ctx: Context, w: Work) -> str:
    """Which secret logs in: 'pending', 'current', 'unconfirmed:<n>' (a pending secret set
    aside earlier, see ``_set_aside``), 'reconcile' (reset through the reconcile account to
    the pending or recorded secret), 'invalid' (none) — or raise when the target cannot tell."""
    if w.pending and _verify(ctx, w, w.pending):
        return "pending"
    if w.current and w.current != w.pending and _verify(ctx, w, w.current):
        return "current"
    # a change still running on the target (its connection dropped) may have landed
    # between the two logins: pending once more
    if w.pending and _verify(ctx, w, w.pending):
        return "pending"
    for n, cipher in enumerate(w.unconfirmed):
        try:
            secret = ctx.vault.decrypt(cipher, _aad_of(w, "history"))
        except VaultError:
            continue
        if secret not in (w.pending, w.current) and _verify(ctx, w, secret):
            return f"unconfirmed:{n}"
    if w.reconciler is None:
        return "invalid"
    wanted = w.pending or w.current
    if not wanted:
        return "invalid"
    try:
        [result] = ctx.target(w.protocol).apply(
            w.endpoint, [Change(w.username, wanted, None)], w.reconciler, ctx.timeout)
        if result.error is not None:
            raise result.error
    except TargetError as exc:
        if _outcome_unknown(exc):
            raise
        # nothing was changed (the reconcile account was refused, the change refused): known
        w.reconcile_error = _describe(exc, w.secrets)
        return "invalid"
    if _verify(ctx, w, wanted):
        return "reconcile"
    return "invalid"


def settle(ctx: Context, works: Sequence[Work]) -> dict[int, str]:
    """Reconcile each work's credential; record which secret is true. op_id -> outcome.

    Outcomes: 'pending' (promoted), 'current' (pending set aside), 'unconfirmed:<n>' (a
    set-aside pending secret is the real one: it becomes current), 'reconcile' (reset
    through the reconcile account), 'invalid', 'lost' (this executor no longer holds the
    operation: nothing written), or 'unknown: <error>'. The operations stay running: the
    caller closes them.

    When the pending secret that is promoted belongs to an earlier operation that failed
    with an unknown outcome, that operation is closed as succeeded: its change did happen,
    so the Retry robot must not make it again.
    """
    works = ctx.keep(works)
    results = _parallel(ctx, works, lambda w: _try_secrets(ctx, w))
    outcomes: dict[int, str] = {w.op_id: "lost" for w in works}
    now = utcnow()
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, works)
        creds = _credentials(db, [w.credential_id for w in works if w.op_id in held])
        for w, res in zip(works, results, strict=True):
            if w.op_id not in held:
                continue
            cred = creds.get(w.credential_id)
            if cred is None:
                outcomes[w.op_id] = "unknown: the credential was deleted"
                continue
            if isinstance(res, BaseException):
                err = _describe(res, w.secrets)
                outcomes[w.op_id] = f"unknown: {err}"
                if cred.pending_secret or cred.status == CredentialStatus.unverified:
                    cred.status = CredentialStatus.unverified
                    cred.status_detail = f"reconciliation inconclusive: {err}"[:500]
                    db.add(cred)
                continue
            outcomes[w.op_id] = res
            was_invalid = cred.status == CredentialStatus.invalid
            used_pending = res == "pending" or (res == "reconcile" and w.pending)
            if used_pending and cred.pending_secret:
                _close_earlier_change(db, cred.pending_operation_id, w.op_id, now)
                _promote(db, cred, f"reconciled by operation {w.op_id}", now, ctx.vault)
                cred.status_detail = ("pending password confirmed by reconciliation"
                                      if res == "pending" else
                                      "pending password set through the reconcile account")
            elif res.startswith("unconfirmed:"):
                _set_aside(db, cred, ctx.vault, now)
                _retire_current(db, cred, ctx.vault, f"reconciled by operation {w.op_id}", now)
                cred.secret = ctx.vault.reseal(w.unconfirmed[int(res.split(":")[1])],
                                               _aad(cred, "history"), _aad(cred, "secret"))
                cred.secret_version += 1
                cred.last_changed_at = now
                _mark_ok(cred, now, "a password set aside as unconfirmed logs in: recorded")
            elif res in ("current", "reconcile"):
                _set_aside(db, cred, ctx.vault, now)
                _mark_ok(cred, now, "recorded password confirmed by reconciliation"
                         if res == "current" else
                         "recorded password set through the reconcile account")
            else:
                cred.status = CredentialStatus.invalid
                cred.status_detail = ("neither the pending nor the recorded password logs in"
                                      + ("; no reconcile account" if w.reconciler is None else
                                         "; the reconcile account could not fix it"
                                         + (f": {w.reconcile_error}" if w.reconcile_error
                                            else "")))[:500]
                cred.updated_at = now
                if w.reconciler is not None or was_invalid:
                    # tried with everything known: reconciliation stops until it changes
                    cred.attention = cred.status_detail
                    cred.attention_at = now
            db.add(cred)
            audit.record(db, ctx.actor, "credential.reconciled", "credential", w.credential_id,
                         {**w.context(), "true_secret": res, "status": cred.status})
            if res == "invalid" and not was_invalid:
                notifications.queue(db, "Invalid password",
                                    context={**w.context(), "situation": "reconcile"})
            elif res == "reconcile" or used_pending or res.startswith("unconfirmed:"):
                how = {"reconcile": "set through the reconcile account",
                       "pending": "the pending password"}.get(res, "a password set aside earlier")
                notifications.queue(db, "Password changed",
                                    context={**w.context(), "situation": "reconciled", "how": how})
        db.commit()
    _log_lost(ctx, works, held, "reconcile")
    return outcomes


def _close_earlier_change(db: Session, op_id: int | None, settling_op: int, now: datetime) -> None:
    """The failed (unknown outcome) operation whose pending secret reconciliation just
    confirmed did its job: close it as succeeded so it is not retried."""
    if op_id is None or op_id == settling_op:
        return
    op = db.get(Operation, op_id)
    if op is None or op.state != OperationState.failed:
        return
    op.state = OperationState.succeeded
    op.retryable = False
    op.step = "promoted"
    op.result = {**(op.result or {}), "settled_by_operation": settling_op,
                 "last_error": op.error}
    op.error = None
    op.finished_at = now
    db.add(op)



# ----------------------------------------------------------------------------- verify / reconcile
def run_verifies(ctx: Context, ops: Sequence[Operation]) -> None:
    """Check that each credential's recorded password logs in (the password check)."""
    works, problems = load(ctx, ops)
    close_problems(ctx, problems)
    if ctx.stopping():
        _release(ctx, works, "the executor stopped before the check started")
        return
    works = verify_candidates(ctx, works)
    unsettled = [w for w in works if w.pending or w.status == CredentialStatus.unverified]
    if unsettled:
        _close_settled(ctx, unsettled, settle(ctx, unsettled))
    works = [w for w in works if w not in unsettled]
    no_secret = [Failure(w, f"verify of {w.where('load')} failed: no recorded password", False, "load")
                 for w in works if not w.current]
    _fail_works(ctx, no_secret)
    works = ctx.keep([w for w in works if w.current])
    results = _parallel(ctx, works, lambda w: _verify(ctx, w, w.current or ""))
    now = utcnow()
    failures = []
    confirmed: list[Work] = []
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, works)
        creds = _credentials(db, [w.credential_id for w in works if w.op_id in held])
        for w, res in zip(works, results, strict=True):
            if w.op_id not in held:
                continue
            if isinstance(res, BaseException):
                failures.append(Failure(w, f"verify of {w.where('verify')} is inconclusive: "
                                    f"{_describe(res, w.secrets)}", True, "verify"))
                continue
            cred, op = creds[w.credential_id], held[w.op_id]
            if res:
                _mark_ok(cred, now, "Password confirmed")
                confirmed.append(w)
            else:
                cred.status = CredentialStatus.invalid
                cred.status_detail = "Invalid password: the recorded password does not log in"
                cred.updated_at = now
                notifications.queue(db, "Invalid password",
                                    context={**w.context(), "situation": "verify",
                                             "reconcile_next": w.reconciler is not None})
            db.add(cred)
            opqueue.mark_succeeded(db, op, {"valid": bool(res)}, step="verified")
            audit.record(db, ctx.actor, "credential.verify", "credential", w.credential_id,
                         {**w.context(), "valid": bool(res)})
        if confirmed:
            notifications.queue(db, "Password confirmed", context={
                "count": len(confirmed),
                "credentials": [f"{w.username}@{w.device}" for w in confirmed[:50]],
                "credential_ids": [w.credential_id for w in confirmed][:500],
                "operation_ids": [w.op_id for w in confirmed][:500]})
        db.commit()
    _fail_works(ctx, failures)


def verify_candidates(ctx: Context, works: Sequence[Work]) -> list[Work]:
    """Try the imported (candidate) secret of each credential that has one; the rest is returned.

    An import never writes a secret over a recorded one: it stores a *candidate* and
    queues a verify. Here the candidate is tried by logging in with it, and only that:

    - it logs in: it becomes the recorded secret (the previous one goes to history,
      reason "import verified"), status ok;
    - it is refused: it is dropped; the credential keeps its secret and status, and an
      "Invalid password" notification says the imported password was refused;
    - the target cannot tell (unreachable...): the candidate stays, the operation fails
      retryable;
    - the credential is not ok or has a change in progress: the candidate is dropped
      untried (reconciliation settles the credential from what it recorded).

    The reconcile and admin accounts are never used: a candidate is never put on a target.
    """
    ids = [w.credential_id for w in works]
    if not ids:
        return list(works)
    with Session(ctx.engine) as db:
        rows = db.exec(select(col(Credential.id), col(Credential.candidate_secret)).where(
            col(Credential.id).in_(ids), col(Credential.candidate_secret).is_not(None))).all()
    tokens = {cid: cipher for cid, cipher in rows if cid is not None and cipher is not None}
    if not tokens:
        return list(works)
    rest = [w for w in works if w.credential_id not in tokens]
    tries: list[tuple[Work, str]] = []
    untried: list[tuple[Work, str]] = []
    broken: list[Failure] = []
    for w in works:
        if w.credential_id not in tokens:
            continue
        if w.pending or w.status != CredentialStatus.ok:
            busy = " with a password change in progress" if w.pending else ""
            untried.append((w, f"the credential is {w.status}{busy}"))
            continue
        try:
            tries.append((w, ctx.vault.decrypt(tokens[w.credential_id], _aad_of(w, "candidate"))))
        except VaultError as exc:
            broken.append(Failure(w, f"verify of the imported password of {w.where('load')} failed: {exc}",
                           False, "load"))
    candidates = {w.op_id: c for w, c in tries}
    results = _parallel(ctx, [w for w, _ in tries], lambda w: _verify(ctx, w, candidates[w.op_id]))
    failures: list[Failure] = []
    now = utcnow()
    with Session(ctx.engine, expire_on_commit=False) as db:
        creds = _credentials(db, [w.credential_id for w, _ in tries + untried])
        held = opqueue.held_many(db, [w.op_id for w, _ in tries + untried], ctx.owner)
        for (w, candidate), res in zip(tries, results, strict=True):
            if isinstance(res, BaseException):
                failures.append(Failure(w, f"verify of the imported password of {w.where('verify')} is "
                                    f"inconclusive: {_describe(res, [*w.secrets, candidate])}; it "
                                    "is tried again later", False, "verify", True))
                continue
            cred, op = creds.get(w.credential_id), held.get(w.op_id)
            outcome = "superseded"
            if cred is not None and cred.candidate_secret == tokens[w.credential_id]:
                outcome = "adopted" if res else "refused"
                if res:
                    _retire_current(db, cred, ctx.vault, "import verified", now)
                    cred.secret = ctx.vault.encrypt(candidate, _aad(cred, "secret"))
                    cred.secret_version += 1
                    cred.last_changed_at = now
                    cred.reminder_sent_at = None
                    if cred.change_interval_days:
                        cred.expires_at = now + timedelta(days=cred.change_interval_days)
                    _mark_ok(cred, now, "imported password verified by logging in")
                    notifications.queue(db, "Password changed",
                                        context={**w.context(), "situation": "imported"})
                else:
                    cred.updated_at = now
                    notifications.queue(db, "Invalid password",
                                        context={**w.context(), "situation": "imported"})
                cred.candidate_secret = None
                db.add(cred)
                audit.record(db, ctx.actor, f"credential.import_{outcome}", "credential",
                             w.credential_id, {**w.context(), "secret_version": cred.secret_version})
            if op is not None:
                opqueue.mark_succeeded(db, op, {"imported_password": outcome}, step="verified")
        for w, why in untried:
            cred, op = creds.get(w.credential_id), held.get(w.op_id)
            if cred is not None and cred.candidate_secret == tokens[w.credential_id]:
                cred.candidate_secret = None
                cred.updated_at = now
                db.add(cred)
            error = (f"verify of {w.where('verify')}: the imported password was discarded "
                     f"untried: {why}")
            if op is not None:
                opqueue.mark_failed(db, op, error, result={"imported_password": "discarded"})
            _notify_failure(db, w.kind, w.context(), error)
            audit.record(db, ctx.actor, "credential.import_discarded", "credential",
                         w.credential_id, {**w.context(), "reason": why})
        db.commit()
    _fail_works(ctx, failures + broken)
    return rest




def run_reconciles(ctx: Context, ops: Sequence[Operation]) -> None:
    """Settle each credential: which secret is true (pending, current, reconcile account)."""
    works, problems = load(ctx, ops)
    close_problems(ctx, problems)
    if works and ctx.stopping():
        _release(ctx, works, "the executor stopped before reconciliation started")
        return
    if works:
        _close_settled(ctx, works, settle(ctx, works))


def _close_settled(ctx: Context, works: Sequence[Work], outcomes: dict[int, str]) -> None:
    failures = []
    works = [w for w in works if outcomes.get(w.op_id) != "lost"]
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, works)
        for w in works:
            res = outcomes[w.op_id]
            if res.startswith("unknown"):
                failures.append(Failure(w, f"reconciliation of {w.where('reconcile')} is inconclusive: "
                                    f"{res[len('unknown: '):]}", True, "reconcile"))
                continue
            op = held.get(w.op_id)
            if op is not None:
                opqueue.mark_succeeded(db, op, {"true_secret": res}, step="reconciled")
            if res == "current" and w.kind in (OperationKind.verify, OperationKind.reconcile):
                notifications.queue(db, "Password confirmed", context=w.context())
        db.commit()
    _fail_works(ctx, failures)



# ----------------------------------------------------------------------------- recovery
def needs_settling(engine: Engine) -> list[int]:
    """Credentials reconciliation must settle, with no live operation: a pending secret or
    *unverified* status (an interrupted change), or *invalid* status on a device with a
    reconcile account (the password was changed outside pamflow: the reconcile account sets
    the recorded one back). A credential found invalid twice, or invalid despite a
    reconcile account, is flagged for attention and waits until it changes."""
    with Session(engine) as db:
        busy = select(col(Operation.credential_id)).where(
            col(Operation.credential_id).is_not(None),
            col(Operation.state).in_([OperationState.queued, OperationState.running]),
            col(Operation.kind).in_([OperationKind.change, OperationKind.activate,
                                OperationKind.reconcile]))
        rows = db.exec(select(col(Credential.id)).join(
            Device, col(Device.id) == col(Credential.device_id)).where(
            sa.or_(col(Credential.pending_secret).is_not(None),
                   col(Credential.status) == CredentialStatus.unverified,
                   sa.and_(col(Credential.status) == CredentialStatus.invalid,
                           col(Device.reconcile_credential_id).is_not(None),
                           col(Device.active) == sa.true())),
            attention_cleared(),
            col(Credential.id).not_in(busy))).all()
    return [i for i in rows if i is not None]
