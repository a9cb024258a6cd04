"""Password reservations: a credential reserved for someone from a start to an end.

The password-reservation robot (``schedule.process_reservations``) starts a reservation
whose start has come, changing the password when ``change_on_start`` (the holder gets a
fresh one), and ends it when its end has come, changing the password when
``change_on_end`` (the password the holder knew stops working). This module makes,
lists and cancels reservations; nothing here touches a target.

Rules for a new reservation: the credential exists (in the caller's tenant, when one is
given); it ends after it starts, at most :data:`MAX_DURATION` later; it does not start in
the past (a start up to :data:`START_GRACE` ago counts as "now"); it overlaps no other
scheduled or active reservation of the same credential; ``requested_by`` names someone
(1-255 characters) and the note is short text. Two requests racing for the same
credential are serialised on the credential's row, so only one of two overlapping
reservations is ever made.

A reservation cancelled while it is active ends at once: when it asked for a change on its
end, that change is queued then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..errors import PamflowError
from ..models import Credential, Device, PasswordReservation, utcnow
from ..operations import queue as opqueue

MAX_DURATION = timedelta(days=366)
START_GRACE = timedelta(minutes=5)
MAX_REQUESTER = 255
MAX_NOTE = 1000
STATES = ("scheduled", "active", "finished", "cancelled")
OPEN_STATES = ("scheduled", "active")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ReservationError(PamflowError, ValueError):
    """A reservation that cannot be made or cancelled; the message says why."""


@dataclass(frozen=True)
class Reservation:
    """A reservation with the account and device it is for."""

    id: int
    credential_id: int
    account: str
    device: str
    device_id: int
    tenant: str
    requested_by: str
    starts_at: datetime
    ends_at: datetime
    change_on_start: bool
    change_on_end: bool
    state: str
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (ISO 8601 times, UTC)."""
        return {"id": self.id, "credential_id": self.credential_id, "account": self.account,
                "device": self.device, "device_id": self.device_id, "tenant": self.tenant,
                "requested_by": self.requested_by, "starts_at": iso(self.starts_at),
                "ends_at": iso(self.ends_at), "change_on_start": self.change_on_start,
                "change_on_end": self.change_on_end, "state": self.state, "note": self.note}


@dataclass(frozen=True)
class CancelledReservation:
    """A cancelled reservation; ``was_active``: it had started, so it ended now, and
    ``end_change_operation_id`` is the change queued for its end (None: none asked for;
    ``end_change_joined``: a change of the credential was queued already and this joined it)."""

    reservation: Reservation
    was_active: bool
    end_change_operation_id: int | None
    end_change_joined: bool = False


def aware(when: datetime) -> datetime:
    """``when`` in UTC; a naive datetime is taken as UTC (SQLite gives stored times back so)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def iso(when: datetime | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return None if when is None else aware(when).isoformat()


def parse_time(value: Any, field: str) -> datetime:
    """An ISO 8601 date-time string (``Z`` or an offset; none means UTC) as an aware datetime."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ReservationError(f"{field} must be an ISO 8601 date and time, e.g. "
                               "2030-01-31T09:00:00Z")
    text = value.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "zZ" else text)
    except ValueError:
        raise ReservationError(f"{field} {text[:40]!r} is not an ISO 8601 date and time, e.g. "
                               "2030-01-31T09:00:00Z") from None
    return aware(when)


def _text(value: Any, field: str, limit: int, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        return None
    if not isinstance(value, str) or not value.strip():
        raise ReservationError(f"{field} is required")
    text = value.strip()
    if len(text) > limit:
        raise ReservationError(f"{field} is {len(text)} characters; at most {limit}")
    if _CONTROL.search(text):
        raise ReservationError(f"{field} contains control characters")
    return text


def _load(db: Session, res: PasswordReservation) -> Reservation:
    cred = db.get(Credential, res.credential_id)
    dev = db.get(Device, cred.device_id) if cred is not None else None
    return _reservation(res, cred, dev)


def _reservation(res: PasswordReservation, cred: Credential | None, dev: Device | None
                 ) -> Reservation:
    if res.id is None:
        raise ReservationError("the reservation is not stored yet")
    return Reservation(
        id=res.id, credential_id=res.credential_id, account=cred.username if cred else "?",
        device=dev.name if dev else "?", device_id=dev.id if dev and dev.id is not None else 0,
        tenant=dev.tenant if dev else "?", requested_by=res.requested_by,
        starts_at=aware(res.starts_at), ends_at=aware(res.ends_at),
        change_on_start=res.change_on_start, change_on_end=res.change_on_end, state=res.state,
        note=res.note)


def _credential_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise ReservationError("credential_id must be a credential's id (a positive integer)")
    return value


def _credential(db: Session, credential_id: int, tenant: str | None) -> tuple[Credential, Device]:
    cred = db.get(Credential, credential_id)
    dev = db.get(Device, cred.device_id) if cred is not None else None
    if cred is None or dev is None or (tenant is not None and dev.tenant != tenant):
        where = f" in tenant {tenant!r}" if tenant is not None else ""
        raise ReservationError(f"no credential {credential_id}{where}")
    return cred, dev


def _lock_credential(db: Session, credential_id: int) -> None:
    """Serialise reservations of one credential: a row lock on PostgreSQL, the write lock
    on SQLite, held until the transaction ends."""
    db.execute(sa.update(Credential).where(col(Credential.id) == credential_id)
               .values(id=col(Credential.id)))


def create(engine: Engine, credential_id: int, starts_at: datetime, ends_at: datetime,
           requested_by: str, *, change_on_start: bool = True, change_on_end: bool = True,
           note: str | None = None, tenant: str | None = None, now: datetime | None = None,
           actor: str = "system") -> Reservation:
    """Reserve a credential from ``starts_at`` to ``ends_at`` for ``requested_by``
    (see the module's rules); audited as ``reservation.create``."""
    now = aware(now or utcnow())
    who = _text(requested_by, "requested_by", MAX_REQUESTER, required=True)
    note = _text(note, "note", MAX_NOTE, required=False)
    starts_at, ends_at = aware(starts_at), aware(ends_at)
    if starts_at < now - START_GRACE:
        raise ReservationError(f"the start {iso(starts_at)} is in the past")
    if ends_at <= starts_at:
        raise ReservationError(f"the end {iso(ends_at)} is not after the start {iso(starts_at)}")
    if ends_at - starts_at > MAX_DURATION:
        raise ReservationError(f"a reservation lasts at most {MAX_DURATION.days} days")
    credential_id = _credential_id(credential_id)
    with Session(engine, expire_on_commit=False) as db:
        _lock_credential(db, credential_id)  # first: on SQLite a read before it could go stale
        cred, dev = _credential(db, credential_id, tenant)
        clash = db.exec(select(PasswordReservation).where(
            col(PasswordReservation.credential_id) == credential_id,
            col(PasswordReservation.state).in_(OPEN_STATES),
            col(PasswordReservation.starts_at) < ends_at,
            col(PasswordReservation.ends_at) > starts_at)
            .order_by(col(PasswordReservation.starts_at))).first()
        if clash is not None:
            raise ReservationError(
                f"credential {credential_id} ({cred.username} on {dev.name}) is already reserved "
                f"from {iso(clash.starts_at)} to {iso(clash.ends_at)} by {clash.requested_by} "
                f"(reservation {clash.id}, {clash.state})")
        res = PasswordReservation(credential_id=credential_id, requested_by=who or "",
                                  starts_at=starts_at, ends_at=ends_at,
                                  change_on_start=change_on_start, change_on_end=change_on_end,
                                  note=note)
        db.add(res)
        db.flush()
        made = _reservation(res, cred, dev)
        audit.record(db, actor, "reservation.create", "password_reservation", res.id,
                     {k: v for k, v in made.as_dict().items() if k not in ("id", "note")})
        db.commit()
    return made


def from_request(engine: Engine, request: Mapping[str, Any], *, actor: str,
                 now: datetime | None = None) -> Reservation:
    """Make the reservation a ``pam.reservation.requested`` event asks for.

    ``request`` is the event's payload: ``credential_id`` (integer), ``starts_at`` and
    ``ends_at`` (ISO 8601), ``requested_by``, optional ``change_on_start``,
    ``change_on_end`` (booleans) and ``note``, and the ``tenant`` the gateway set from the
    webhook source: a credential of another tenant is refused like an unknown one.
    """
    if not isinstance(request, Mapping):
        raise ReservationError("the request must be an object")
    tenant = request.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise ReservationError("the request names no tenant (the gateway sets it from the source)")
    flags = {}
    for name in ("change_on_start", "change_on_end"):
        value = request.get(name, True)
        if not isinstance(value, bool):
            raise ReservationError(f"{name} must be true or false")
        flags[name] = value
    return create(engine, _credential_id(request.get("credential_id")),
                  parse_time(request.get("starts_at"), "starts_at"),
                  parse_time(request.get("ends_at"), "ends_at"),
                  request.get("requested_by", ""),  # checked by create
                  note=request.get("note"), tenant=tenant, now=now, actor=actor, **flags)


def list_reservations(engine: Engine, *, state: str | None = None,
                      credential_id: int | None = None, tenant: str | None = None,
                      limit: int = 200) -> list[Reservation]:
    """Reservations, soonest start first (``state`` ``open``: scheduled and active)."""
    if state is not None and state not in (*STATES, "open"):
        raise ReservationError(f"state must be one of {', '.join(STATES)} or open")
    query = (select(PasswordReservation, Credential, Device)
             .join(Credential, col(Credential.id) == col(PasswordReservation.credential_id))
             .join(Device, col(Device.id) == col(Credential.device_id)))
    if state is not None:
        query = query.where(col(PasswordReservation.state).in_(
            OPEN_STATES if state == "open" else (state,)))
    if credential_id is not None:
        query = query.where(col(PasswordReservation.credential_id) == credential_id)
    if tenant is not None:
        query = query.where(col(Device.tenant) == tenant)
    query = query.order_by(col(PasswordReservation.starts_at), col(PasswordReservation.id)).limit(limit)
    with Session(engine) as db:
        return [_reservation(res, cred, dev) for res, cred, dev in db.exec(query)]


def cancel(engine: Engine, reservation_id: int, *, actor: str, tenant: str | None = None,
           now: datetime | None = None) -> CancelledReservation:
    """Cancel a scheduled or active reservation (audited as ``reservation.cancel``).

    An active one ends now: its end change is queued when it asked for one.
    """
    now = aware(now or utcnow())
    with Session(engine, expire_on_commit=False) as db:
        res = db.get(PasswordReservation, reservation_id)
        dev = None
        if res is not None:
            cred = db.get(Credential, res.credential_id)
            dev = db.get(Device, cred.device_id) if cred is not None else None
        if res is None or (tenant is not None and (dev is None or dev.tenant != tenant)):
            raise ReservationError(f"no reservation {reservation_id}"
                                   + (f" in tenant {tenant!r}" if tenant is not None else ""))
        if res.state not in OPEN_STATES:
            raise ReservationError(f"reservation {reservation_id} is already {res.state}")
        was = res.state
        done = db.execute(sa.update(PasswordReservation).where(
            col(PasswordReservation.id) == reservation_id, col(PasswordReservation.state) == was)
            .values(state="cancelled"))
        if getattr(done, "rowcount", 0) != 1:  # the robot started or ended it meanwhile
            raise ReservationError(f"reservation {reservation_id} changed while it was being "
                                   "cancelled; look at it again")
        db.refresh(res)
        made = _load(db, res)
        change = was == "active" and res.change_on_end
        detail = {"credential_id": res.credential_id, "was": was, "end_change": change}
        audit.record(db, actor, "reservation.cancel", "password_reservation", res.id, detail)
        who = f"{made.account} on {made.device}"
        notifications.queue(db, "Password reservation", context={
            "reservation_id": res.id, "credential_id": res.credential_id, "who": who,
            "requested_by": res.requested_by, "cancelled_by": actor, "phase": "cancel",
            "change_queued": change}, tenant=dev.tenant if dev else None)
        db.commit()
    op_id, joined = None, False
    if change:
        [queued] = opqueue.enqueue_many(engine, [dict(
            kind="change", credential_id=made.credential_id, priority=20,
            reason=f"reservation {made.id} cancelled while active",
            parameters={"reservation_id": made.id, "phase": "end"})], requested_by=actor)
        op_id, joined = queued.id, queued.coalesced
    return CancelledReservation(made, was == "active", op_id, joined)


__all__ = ["MAX_DURATION", "START_GRACE", "CancelledReservation", "Reservation", "ReservationError",
           "aware", "cancel", "create", "from_request", "iso", "list_reservations", "parse_time"]
