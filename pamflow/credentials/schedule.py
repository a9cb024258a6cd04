"""What the credential robots put in the queue (no target is touched): due changes,
password checks, change reminders and reservation starts and ends."""


from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

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
from .store import (
    attention_cleared,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- scheduling
# What the credential robots put in the queue (flows/credentials.py); no target is touched.
def due_at(cred: Credential) -> datetime | None:
    """When ``cred``'s password is due to change: its expiry, else last change + interval."""
    if cred.expires_at is not None:
        return cred.expires_at
    if cred.change_interval_days:
        return (cred.last_changed_at or cred.created_at) + timedelta(days=cred.change_interval_days)
    return None


def _busy_credentials(kinds: Sequence[str]):
    return select(Operation.credential_id).where(
        Operation.credential_id.is_not(None), Operation.kind.in_(list(kinds)),
        Operation.state.in_([OperationState.queued, OperationState.running]))


def _reserved_now(now: datetime):
    from ..models import PasswordReservation

    return select(PasswordReservation.credential_id).where(
        PasswordReservation.state == "active", PasswordReservation.starts_at <= now,
        PasswordReservation.ends_at > now)


def queue_due_changes(engine: Engine, *, now: datetime | None = None, limit: int = 5000,
                      actor: str = "robot:expired-password") -> list[dict]:
    """Queue a change for every auto-changed credential past its expiry or change interval.

    Skipped: devices inactive or in maintenance mode, credentials with a change already
    queued or running, credentials whose status is not ok/expired (reconciliation first),
    credentials in an active reservation (the holder is using the password; the
    reservation's end changes it), and credentials flagged for attention that nobody has
    changed since. A due credential is marked ``expired``.
    """
    now = now or utcnow()
    queued: list[dict] = []
    with Session(engine, expire_on_commit=False) as db:
        rows = db.exec(
            select(Credential, Device).join(Device, Device.id == Credential.device_id).where(
                Credential.auto_change == sa.true(), Device.active == sa.true(),
                Device.maintenance_mode == sa.false(), Credential.secret.is_not(None),
                Credential.status.in_([CredentialStatus.ok, CredentialStatus.expired]),
                sa.or_(Credential.expires_at.is_not(None),
                       Credential.change_interval_days.is_not(None)),
                Credential.id.not_in(_busy_credentials([OperationKind.change])),
                Credential.id.not_in(_reserved_now(now)), attention_cleared())
            .order_by(Credential.id)).all()
        items = []
        for cred, dev in rows:
            due = due_at(cred)
            if due is None or due > now:
                continue
            why = "password expired" if cred.expires_at is not None else \
                f"change interval of {cred.change_interval_days} day(s) reached"
            if cred.status != CredentialStatus.expired:
                cred.status = CredentialStatus.expired
                cred.status_detail = f"{why} at {due.isoformat()}"
                cred.updated_at = now
                db.add(cred)
            items.append(dict(kind="change", credential_id=cred.id, reason=why, priority=50))
            queued.append({"credential_id": cred.id, "account": cred.username,
                           "device": dev.name, "due_at": due.isoformat(), "reason": why})
            if len(items) >= limit:
                break
        db.commit()
    if items:
        opqueue.enqueue_many(engine, items, requested_by=actor)
    return queued


def queue_password_checks(engine: Engine, *, max_age: timedelta = timedelta(hours=24),
                          now: datetime | None = None, limit: int = 5000,
                          actor: str = "robot:password-check") -> list[dict]:
    """Queue a verify for credentials not verified within ``max_age`` (the password check)."""
    now = now or utcnow()
    with Session(engine) as db:
        rows = db.exec(
            select(Credential.id, Credential.username, Device.name)
            .join(Device, Device.id == Credential.device_id).where(
                Device.active == sa.true(), Device.maintenance_mode == sa.false(),
                Credential.secret.is_not(None), Credential.pending_secret.is_(None),
                Credential.status != CredentialStatus.unverified, attention_cleared(),
                sa.or_(Credential.last_verified_at.is_(None),
                       Credential.last_verified_at < now - max_age),
                Credential.id.not_in(_busy_credentials(list(OperationKind))))
            .order_by(Credential.last_verified_at.is_not(None), Credential.last_verified_at)
            .limit(limit)).all()
    if rows:
        opqueue.enqueue_many(engine, [dict(kind="verify", credential_id=cid, priority=200,
                                           reason="periodic password check",
                                           expires_at=now + max(max_age, timedelta(hours=1)))
                                      for cid, _u, _d in rows],
                             requested_by=actor)
    return [{"credential_id": cid, "account": user, "device": dev} for cid, user, dev in rows]


def queue_change_reminders(engine: Engine, *, days_before: int = 7, now: datetime | None = None,
                           actor: str = "robot:password-change-reminder") -> list[dict]:
    """Queue "Password change reminder" for credentials due within ``days_before`` days.

    Once per change cycle: ``reminder_sent_at`` is set, and a promotion clears it.
    """
    now = now or utcnow()
    horizon = now + timedelta(days=days_before)
    sent: list[dict] = []
    with Session(engine, expire_on_commit=False) as db:
        rows = db.exec(select(Credential, Device).join(Device, Device.id == Credential.device_id)
                       .where(Credential.reminder_sent_at.is_(None), Device.active == sa.true(),
                              sa.or_(Credential.expires_at.is_not(None),
                                     Credential.change_interval_days.is_not(None)))).all()
        for cred, dev in rows:
            due = due_at(cred)
            if due is None or due > horizon or due <= now:
                continue
            days = max(0, (due - now).days)
            context = {"credential_id": cred.id, "device_id": dev.id, "device": dev.name,
                       "account": cred.username, "due_at": due.isoformat()}
            notifications.queue(db, "Password change reminder",
                                f"Password change reminder: {cred.username} on {dev.name}",
                                f"The password of {cred.username} on {dev.name} is due to change "
                                f"on {due:%Y-%m-%d %H:%M} UTC (in {days} day(s)).", context)
            cred.reminder_sent_at = now
            db.add(cred)
            sent.append(context)
        if sent:
            audit.record(db, actor, "credential.change_reminder", "credential", None,
                         {"credential_ids": [c["credential_id"] for c in sent][:500],
                          "count": len(sent)})
        db.commit()
    return sent


def process_reservations(engine: Engine, *, now: datetime | None = None,
                         actor: str = "robot:password-reservation") -> list[dict]:
    """Start and end future-date password reservations; queue their changes.

    A reservation whose start has come becomes ``active`` (a change is queued when
    ``change_on_start``, so the holder gets a fresh password); one whose end has come
    becomes ``finished`` (a change is queued when ``change_on_end``, so the password the
    holder knew stops working).
    """
    from ..models import PasswordReservation

    now = now or utcnow()
    events: list[dict] = []
    items: list[dict] = []
    with Session(engine, expire_on_commit=False) as db:
        rows = db.exec(select(PasswordReservation).where(
            PasswordReservation.state.in_(["scheduled", "active"]),
            sa.or_(sa.and_(PasswordReservation.state == "scheduled",
                           PasswordReservation.starts_at <= now),
                   PasswordReservation.ends_at <= now))
            .order_by(PasswordReservation.starts_at)).all()
        for res in rows:
            cred = db.get(Credential, res.credential_id)
            dev = db.get(Device, cred.device_id) if cred else None
            who = f"{cred.username if cred else res.credential_id} on {dev.name if dev else '?'}"
            for phase in ("start", "end"):
                if phase == "start" and not (res.state == "scheduled" and res.starts_at <= now):
                    continue
                if phase == "end" and res.ends_at > now:
                    continue
                res.state = "active" if phase == "start" else "finished"
                change = res.change_on_start if phase == "start" else res.change_on_end
                if change and cred is not None:
                    items.append(dict(kind="change", credential_id=cred.id, priority=20,
                                      reason=f"reservation {res.id} {phase}",
                                      requested_by=res.requested_by,
                                      parameters={"reservation_id": res.id, "phase": phase}))
                context = {"reservation_id": res.id, "credential_id": res.credential_id,
                           "requested_by": res.requested_by, "phase": phase,
                           "change_queued": bool(change and cred is not None)}
                verb = "started" if phase == "start" else "ended"
                tail = "; a password change was queued" if context["change_queued"] else ""
                notifications.queue(db, "Password reservation",
                                    f"Password reservation {verb}: {who}",
                                    f"Reservation {res.id} of {who} by {res.requested_by} "
                                    f"{verb}{tail}.", context)
                audit.record(db, actor, f"reservation.{phase}", "password_reservation", res.id,
                             context)
                events.append(context)
            db.add(res)
        db.commit()
    if items:
        opqueue.enqueue_many(engine, items, requested_by=actor)
    return events
