"""What the credential robots put in the queue (no target is touched): due changes,
password checks, change reminders and reservation starts and ends."""


from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
    row_id,
    utcnow,
)
from ..operations import queue as opqueue
from .store import (
    attention_cleared,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- scheduling
# What the credential robots put in the queue (flows/credentials.py); no target is touched.
@dataclass(frozen=True)
class DueChange:
    """A change queued for a credential past its expiry or change interval."""

    credential_id: int
    account: str
    device: str
    due_at: str
    reason: str


@dataclass(frozen=True)
class QueuedCheck:
    """A password check (verify) queued for a credential."""

    credential_id: int
    account: str
    device: str


@dataclass(frozen=True)
class Reminder:
    """A "Password change reminder" queued for a credential due soon."""

    credential_id: int
    device_id: int
    device: str
    account: str
    due_at: str


@dataclass(frozen=True)
class ReservationEvent:
    """A reservation that started or ended, and whether a change was queued for it."""

    reservation_id: int
    credential_id: int
    requested_by: str
    phase: str
    change_queued: bool


def _id(value: int | None) -> int:
    """The id of a row read from the store (never None there)."""
    if value is None:
        raise ValueError("a row read from the store has no id")
    return value


def due_at(cred: Credential) -> datetime | None:
    """When ``cred``'s password is due to change: its expiry, else last change + interval."""
    if cred.expires_at is not None:
        return cred.expires_at
    if cred.change_interval_days:
        return (cred.last_changed_at or cred.created_at) + timedelta(days=cred.change_interval_days)
    return None


def _busy_credentials(kinds: Sequence[str]):
    return select(col(Operation.credential_id)).where(
        col(Operation.credential_id).is_not(None), col(Operation.kind).in_(list(kinds)),
        col(Operation.state).in_([OperationState.queued, OperationState.running]))


def _reserved_now(now: datetime):
    from ..models import PasswordReservation

    return select(col(PasswordReservation.credential_id)).where(
        col(PasswordReservation.state) == "active", col(PasswordReservation.starts_at) <= now,
        col(PasswordReservation.ends_at) > now)


def queue_due_changes(engine: Engine, *, now: datetime | None = None, limit: int = 5000,
                      actor: str = "robot:expired-password") -> list[DueChange]:
    """Queue a change for every auto-changed credential past its expiry or change interval.

    Skipped: devices inactive or in maintenance mode, credentials with a change already
    queued or running, credentials whose status is not ok/expired (reconciliation first),
    credentials in an active reservation (the holder is using the password; the
    reservation's end changes it), and credentials flagged for attention that nobody has
    changed since. A due credential is marked ``expired``.
    """
    now = now or utcnow()
    queued: list[DueChange] = []
    with Session(engine, expire_on_commit=False) as db:
        rows = db.exec(
            select(Credential, Device).join(Device, col(Device.id) == col(Credential.device_id)).where(
                col(Credential.auto_change) == sa.true(), col(Device.active) == sa.true(),
                col(Device.maintenance_mode) == sa.false(), col(Credential.secret).is_not(None),
                col(Credential.status).in_([CredentialStatus.ok, CredentialStatus.expired]),
                sa.or_(col(Credential.expires_at).is_not(None),
                       col(Credential.change_interval_days).is_not(None)),
                col(Credential.id).not_in(_busy_credentials([OperationKind.change])),
                col(Credential.id).not_in(_reserved_now(now)), attention_cleared())
            .order_by(col(Credential.id))).all()
        items: list[dict] = []
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
            items.append(dict(kind="change", credential_id=row_id(cred), reason=why, priority=50))
            queued.append(DueChange(row_id(cred), cred.username, dev.name, due.isoformat(), why))
            if len(items) >= limit:
                break
        db.commit()
    if items:
        opqueue.enqueue_many(engine, items, requested_by=actor)
    return queued


def queue_password_checks(engine: Engine, *, max_age: timedelta = timedelta(hours=24),
                          now: datetime | None = None, limit: int = 5000,
                          actor: str = "robot:password-check") -> list[QueuedCheck]:
    """Queue a verify for credentials not verified within ``max_age`` (the password check)."""
    now = now or utcnow()
    with Session(engine) as db:
        rows = db.exec(
            select(col(Credential.id), col(Credential.username), col(Device.name))
            .join(Device, col(Device.id) == col(Credential.device_id)).where(
                col(Device.active) == sa.true(), col(Device.maintenance_mode) == sa.false(),
                col(Credential.secret).is_not(None), col(Credential.pending_secret).is_(None),
                col(Credential.status) != CredentialStatus.unverified, attention_cleared(),
                sa.or_(col(Credential.last_verified_at).is_(None),
                       col(Credential.last_verified_at) < now - max_age),
                col(Credential.id).not_in(_busy_credentials(list(OperationKind))))
            .order_by(col(Credential.last_verified_at).is_not(None), col(Credential.last_verified_at))
            .limit(limit)).all()
    checks = [QueuedCheck(cid, user, dev) for cid, user, dev in rows if cid is not None]
    if checks:
        opqueue.enqueue_many(engine, [dict(kind="verify", credential_id=c.credential_id, priority=200,
                                           reason="periodic password check",
                                           expires_at=now + max(max_age, timedelta(hours=1)))
                                      for c in checks],
                             requested_by=actor)
    return checks


def queue_change_reminders(engine: Engine, *, days_before: int = 7, now: datetime | None = None,
                           actor: str = "robot:password-change-reminder") -> list[Reminder]:
    """Queue "Password change reminder" for credentials due within ``days_before`` days.

    Once per change cycle: ``reminder_sent_at`` is set, and a promotion clears it.
    """
    now = now or utcnow()
    horizon = now + timedelta(days=days_before)
    sent: list[Reminder] = []
    with Session(engine, expire_on_commit=False) as db:
        rows = db.exec(select(Credential, Device).join(Device, col(Device.id) == col(Credential.device_id))
                       .where(col(Credential.reminder_sent_at).is_(None), col(Device.active) == sa.true(),
                              sa.or_(col(Credential.expires_at).is_not(None),
                                     col(Credential.change_interval_days).is_not(None)))).all()
        for cred, dev in rows:
            due = due_at(cred)
            if due is None or due > horizon or due <= now:
                continue
            days = max(0, (due - now).days)
            reminder = Reminder(row_id(cred), row_id(dev), dev.name, cred.username, due.isoformat())
            context = {**asdict(reminder), "due": f"{due:%Y-%m-%d %H:%M}", "days": days}
            notifications.queue(db, "Password change reminder", context=context,
                                tenant=dev.tenant)
            cred.reminder_sent_at = now
            db.add(cred)
            sent.append(reminder)
        if sent:
            audit.record(db, actor, "credential.change_reminder", "credential", None,
                         {"credential_ids": [c.credential_id for c in sent][:500],
                          "count": len(sent)})
        db.commit()
    return sent


def process_reservations(engine: Engine, *, now: datetime | None = None,
                         actor: str = "robot:password-reservation") -> list[ReservationEvent]:
    """Start and end future-date password reservations; queue their changes.

    A reservation whose start has come becomes ``active`` (a change is queued when
    ``change_on_start``, so the holder gets a fresh password); one whose end has come
    becomes ``finished`` (a change is queued when ``change_on_end``, so the password the
    holder knew stops working). Each move is a conditional update from the state read, so
    two passes at once (the scheduled robot and a requested reservation's run), or a
    cancellation meanwhile, never start or end a reservation twice.
    """
    from ..models import PasswordReservation

    now = now or utcnow()
    events: list[ReservationEvent] = []
    items: list[dict] = []
    with Session(engine, expire_on_commit=False) as db:
        rows = db.exec(select(PasswordReservation).where(
            col(PasswordReservation.state).in_(["scheduled", "active"]),
            sa.or_(sa.and_(col(PasswordReservation.state) == "scheduled",
                           col(PasswordReservation.starts_at) <= now),
                   col(PasswordReservation.ends_at) <= now))
            .order_by(col(PasswordReservation.starts_at))).all()
        for res in rows:
            phases = [phase for phase in ("start", "end")
                      if (phase == "start" and res.state == "scheduled" and res.starts_at <= now)
                      or (phase == "end" and res.ends_at <= now)]
            final = "finished" if "end" in phases else "active"
            moved = db.execute(sa.update(PasswordReservation).where(
                col(PasswordReservation.id) == res.id, col(PasswordReservation.state) == res.state)
                .values(state=final))
            if getattr(moved, "rowcount", 0) != 1:  # another pass or a cancellation got there
                continue
            cred = db.get(Credential, res.credential_id)
            dev = db.get(Device, cred.device_id) if cred else None
            who = f"{cred.username if cred else res.credential_id} on {dev.name if dev else '?'}"
            for phase in phases:
                change = res.change_on_start if phase == "start" else res.change_on_end
                if change and cred is not None:
                    items.append(dict(kind="change", credential_id=cred.id, priority=20,
                                      reason=f"reservation {res.id} {phase}",
                                      requested_by=res.requested_by,
                                      parameters={"reservation_id": res.id, "phase": phase}))
                event = ReservationEvent(row_id(res), res.credential_id, res.requested_by, phase,
                                         bool(change and cred is not None))
                context = asdict(event)
                notifications.queue(db, "Password reservation", context={**context, "who": who},
                                    tenant=dev.tenant if dev else None)
                audit.record(db, actor, f"reservation.{phase}", "password_reservation", res.id,
                             context)
                events.append(event)
        db.commit()
    if items:
        opqueue.enqueue_many(engine, items, requested_by=actor)
    return events
