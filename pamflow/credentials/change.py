"""Change and activation: the write-ahead steps (pending stored, applied, verified,
promoted), a batch at a time, one ``apply`` per device."""


from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from sqlmodel import Session

from .. import audit, notifications
from ..faults import checkpoint
from ..models import (
    CredentialStatus,
    Operation,
    OperationKind,
    utcnow,
)
from ..operations import queue as opqueue
from ..targets.base import Change
from ..vault import credential_aad
from .settle import (
    settle,
)
from .store import (
    Failure,
    _advance,
    _credentials,
    _fail_works,
    _hold,
    _log_lost,
    _promote,
    _release,
    close_problems,
)
from .work import (
    Context,
    Work,
    _aad_of,
    _describe,
    _outcome_unknown,
    _parallel,
    _verify,
    load,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- change/activate
def run_changes(ctx: Context, ops: Sequence[Operation]) -> None:
    """Change (or activate) the passwords of ``ops`` with the write-ahead protocol."""
    works, problems = load(ctx, ops)
    close_problems(ctx, problems)
    if not works:
        return
    # a credential with a pending secret is settled first: it may be this operation's own
    # write-ahead from before a crash, or another's; never overwrite it unsettled
    unsettled = [w for w in works if w.pending or w.status == CredentialStatus.unverified]
    if unsettled:
        outcomes = settle(ctx, unsettled)
        done, failed, gone = [], [], set()
        for w in unsettled:
            res = outcomes[w.op_id]
            if res == "lost":
                gone.add(w.op_id)
            elif res.startswith("unknown") or res == "invalid":
                failed.append(Failure(w, f"{w.kind} of {w.where('reconcile before change')} could not "
                                  f"settle the previous change: {res}", res != "invalid",
                               "reconcile"))
            elif res in ("pending", "reconcile") and w.pending_is_mine:
                done.append(w)  # this very change had been applied before the crash
            else:
                if res.startswith("unconfirmed:"):
                    w.current = ctx.vault.decrypt(w.unconfirmed[int(res.split(":")[1])],
                                                  _aad_of(w, "history"))
                elif res in ("pending", "reconcile") and w.pending:
                    w.current = w.pending
                w.pending = w.pending_cipher = None
        _finish_changes(ctx, done, recovered=True)
        _fail_works(ctx, failed)
        settled_ids = {w.op_id for w in done} | {f.work.op_id for f in failed} | gone
        works = [w for w in works if w.op_id not in settled_ids]
    if not works:
        return
    if ctx.stopping():
        _release(ctx, works, "the executor stopped before the change started")
        return
    timer = _StepTimer(len(works))
    with Session(ctx.engine, expire_on_commit=False) as db:
        works = _advance(db, ctx, works, "claimed")
        db.commit()
    checkpoint("claimed")
    works = _store_pending(ctx, works)
    timer.lap("pending_stored")
    checkpoint("pending_stored")
    if ctx.stopping():
        _release(ctx, works, "the executor stopped before the target was touched")
        return
    works = _apply(ctx, works)
    timer.lap("applied")
    checkpoint("applied")
    works = _verify_new(ctx, works)
    timer.lap("verified")
    checkpoint("verified")
    _finish_changes(ctx, works)
    timer.lap("promoted")
    checkpoint("promoted")
    log.debug("change batch of %d: %s", timer.n, timer)


class _StepTimer:
    """Seconds per protocol step of a batch (debug logging; benchmarks read it)."""

    def __init__(self, n: int) -> None:
        import time

        self.n, self._clock = n, time.monotonic
        self.laps: dict[str, float] = {}
        self._last = self._clock()

    def lap(self, step: str) -> None:
        now = self._clock()
        self.laps[step] = round(now - self._last, 3)
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}s" for k, v in self.laps.items())


def _store_pending(ctx: Context, works: list[Work]) -> list[Work]:
    """Step 2: generate by policy, store encrypted as pending, commit."""
    now = utcnow()
    bad: list[Failure] = []
    kept: list[Work] = []
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, ctx.keep(works), step="pending_stored")
        _log_lost(ctx, works, held, "pending_stored")
        works = [w for w in works if w.op_id in held]
        creds = _credentials(db, [w.credential_id for w in works])
        for w in works:
            try:
                if w.kind == OperationKind.activate and w.current and \
                        not w.parameters.get("generate"):
                    w.new = w.current  # activation puts the recorded password on the target
                else:
                    w.new = ctx.policy(db, w.policy).generate()
                cipher = ctx.vault.encrypt(w.new, credential_aad(w.credential_id, w.device_id,
                                                                 "pending"))
            except Exception as exc:  # noqa: BLE001 - policy/vault errors, per account
                bad.append(Failure(w, f"{w.kind} of {w.where('generate')} failed: "
                               f"{_describe(exc, w.secrets)}", False, "generate"))
                continue
            cred = creds[w.credential_id]
            cred.pending_secret = cipher
            cred.pending_operation_id = w.op_id
            cred.pending_since = now
            cred.updated_at = now
            db.add(cred)
            w.pending, w.pending_cipher, w.pending_is_mine = w.new, cipher, True
            w.step = "pending_stored"
            kept.append(w)
        db.commit()
    _fail_works(ctx, bad)
    return kept


def _apply(ctx: Context, works: list[Work]) -> list[Work]:
    """Step 3: one ``target.apply`` per device with all its accounts, devices in parallel.

    Only operations whose lease still has room for the apply are sent to the target (an
    executor that stalled must not change a password another executor now owns); the
    others are given back untouched.
    """
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, ctx.keep(works), min_lease_s=2 * ctx.timeout)
        db.commit()
    late = [w for w in ctx.keep(works) if w.op_id not in held]
    if late:
        log.warning("%s: lease too short or lost for %d operation(s); not applied",
                    ctx.owner, len(late))
        _release(ctx, late, "the lease had no time left to apply the change")
    works = [w for w in works if w.op_id in held]
    by_device: dict[int, list[Work]] = defaultdict(list)
    for w in works:
        by_device[w.device_id].append(w)
    groups = list(by_device.values())

    def apply_group(group: list[Work]):
        first = group[0]
        changes = [Change(w.username, w.new or "", w.current) for w in group]
        return ctx.target(first.protocol).apply(first.endpoint, changes, first.admin, ctx.timeout)

    def run(group_index_work: Work):
        return apply_group(by_device[group_index_work.device_id])

    results = _parallel(ctx, [g[0] for g in groups], run)
    applied: list[Work] = []
    failures: list[Failure] = []
    for group, res in zip(groups, results, strict=True):
        if isinstance(res, BaseException):
            for w in group:
                step = getattr(res, "step", "") or "apply"
                failures.append(Failure(w, f"{w.kind} of {w.where(step)} failed: "
                                    f"{_describe(res, w.secrets)}", _outcome_unknown(res), step,
                                 getattr(res, "retryable", False)))
            continue
        by_user = {r.username: r for r in res}
        for w in group:
            r = by_user.get(w.username)
            if r is None:
                failures.append(Failure(w, f"{w.kind} of {w.where('apply')} failed: the target "
                                    "returned no result for the account", True, "apply"))
            elif r.error is not None:
                step = getattr(r.error, "step", "") or "apply"
                failures.append(Failure(w, f"{w.kind} of {w.where(step)} failed: "
                                    f"{_describe(r.error, w.secrets)}",
                                 _outcome_unknown(r.error), step, r.error.retryable))
            else:
                applied.append(w)
    checkpoint("target_applied")
    _fail_works(ctx, failures)
    if applied:
        now = utcnow()
        with Session(ctx.engine, expire_on_commit=False) as db:
            applied = _advance(db, ctx, applied, "applied")
            creds = _credentials(db, [w.credential_id for w in applied])
            for w in applied:
                cred = creds[w.credential_id]
                cred.status = CredentialStatus.unverified
                cred.status_detail = f"new password applied by operation {w.op_id}, not yet verified"
                cred.updated_at = now
                db.add(cred)
            db.commit()
    return applied


def _verify_new(ctx: Context, works: list[Work]) -> list[Work]:
    """Step 4: log in with each new secret, concurrently; inconclusive -> unverified."""
    works = ctx.keep(works)
    results = _parallel(ctx, works, lambda w: _verify(ctx, w, w.new or ""))
    verified: list[Work] = []
    refused: list[Work] = []
    failures: list[Failure] = []
    for w, res in zip(works, results, strict=True):
        if res is True:
            verified.append(w)
        elif isinstance(res, BaseException):
            failures.append(Failure(w, f"{w.kind} of {w.where('verify')} is inconclusive: "
                                f"{_describe(res, w.secrets)}; the credential is unverified "
                                "until reconciliation settles it", True, "verify"))
        else:
            refused.append(w)
    if refused:  # applied, yet the new password does not log in: let reconciliation decide
        outcomes = settle(ctx, refused)
        for w in refused:
            res = outcomes[w.op_id]
            if res == "pending":
                verified.append(w)  # promoted by settle already; closed below as a change
                w.step = "promoted-by-settle"
            elif res == "lost":
                continue
            else:
                failures.append(Failure(w, f"{w.kind} of {w.where('verify')} failed: the target took "
                                    f"the change but the new password does not log in; "
                                    f"reconciliation: {res}", res.startswith("unknown"),
                                 "verify"))
    _fail_works(ctx, failures)
    if verified:
        with Session(ctx.engine, expire_on_commit=False) as db:
            fresh = _advance(db, ctx, [w for w in verified if w.step != "promoted-by-settle"],
                             "verified")
            db.commit()
        kept = {w.op_id for w in fresh}
        verified = [w for w in verified if w.op_id in kept or w.step == "promoted-by-settle"]
    return verified


def _finish_changes(ctx: Context, works: Sequence[Work], recovered: bool = False) -> None:
    """Step 5: promote, close the operations, notify and audit — one transaction."""
    if not works:
        return
    now = utcnow()
    with Session(ctx.engine, expire_on_commit=False) as db:
        held = _hold(db, ctx, works)
        creds = _credentials(db, [w.credential_id for w in works if w.op_id in held])
        for w in works:
            op = held.get(w.op_id)
            cred = creds.get(w.credential_id)
            if op is None or cred is None:
                continue
            if cred.pending_secret and cred.pending_operation_id == w.op_id:
                _promote(db, cred, f"{w.kind} operation {w.op_id}", now, ctx.vault)
                db.add(cred)
            opqueue.mark_succeeded(db, op, {"recovered": recovered,
                                            "secret_version": cred.secret_version},
                                   step="promoted")
            activation = w.kind == OperationKind.activate
            done = "Activation executed" if activation else "Change Executed"
            notifications.queue(db, done, context={**w.context(), "recovered": bool(recovered)})
            notifications.queue(db, "Password changed",
                                context={**w.context(), "situation": "rotated"})
            audit.record(db, ctx.actor, f"credential.{w.kind}", "credential", w.credential_id,
                         {**w.context(), "secret_version": cred.secret_version,
                          "recovered": recovered})
        db.commit()
    _log_lost(ctx, works, held, "promoted")
    log.info("%d password(s) %s", len(held), "recovered" if recovered else "changed")
