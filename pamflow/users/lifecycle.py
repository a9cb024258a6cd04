"""User eligibility check and user notification before lock (seed 001's job scheduler).

- **User eligibility check**: checks local users to lock inactive users (no login for
  ``inactive_days``, counted from their creation when they never logged in) and expire
  temporary users (past ``temporary_until``), and unlocks users whose temporary lock
  (``locked_until``) has passed. Directory (LDAP) users are the directory's to lock; only
  their temporary locks are lifted here.
- **User notification before lock**: tells inactive users ``notice_days`` before the lock
  (and temporary users before they expire) by queuing the catalogue notification "User
  notification before lock"; once per inactivity episode (a new login starts a new one).

Settings: system parameters ``users.inactive_days`` (90) and ``users.lock_notice_days``
(7). Every change is audited, in batches of at most ``batch_size`` users per transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..errors import PamflowError
from ..models import SystemParameter, User, utcnow

NOTICE_TYPE = "User notification before lock"


class UserLifecycleError(PamflowError):
    """A user lifecycle setting is invalid."""


@dataclass(frozen=True)
class LifecycleSettings:
    inactive_days: int = 90
    notice_days: int = 7
    batch_size: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.inactive_days <= 36_500:
            raise UserLifecycleError("users.inactive_days must be between 1 and 36500")
        if not 0 <= self.notice_days < self.inactive_days:
            raise UserLifecycleError("users.lock_notice_days must be at least 0 and less than "
                                     "users.inactive_days")
        if not 1 <= self.batch_size <= 10_000:
            raise UserLifecycleError("batch_size must be between 1 and 10000")


def settings_from_parameters(db: Session, batch_size: int = 500) -> LifecycleSettings:
    values = {}
    for key, name in (("users.inactive_days", "inactive_days"),
                      ("users.lock_notice_days", "notice_days")):
        row = db.get(SystemParameter, key)
        if row is not None:
            try:
                values[name] = int(row.value.strip())
            except ValueError:
                raise UserLifecycleError(f"system parameter {key} must be a whole number, not "
                                         f"{row.value[:40]!r}") from None
    return LifecycleSettings(batch_size=batch_size, **values)


@dataclass(frozen=True)
class UserChange:
    user_id: int
    username: str
    change: str  # locked | expired | unlocked
    reason: str


def _last_activity() -> sa.ColumnElement:
    return sa.func.coalesce(col(User.last_login_at), col(User.created_at))


def _apply(engine: Engine, where: Sequence[sa.ColumnElement[bool]], values: dict, change: str,
           reason: str, actor: str, batch_size: int) -> list[UserChange]:
    out: list[UserChange] = []
    while True:
        with Session(engine) as db:
            query = select(User).where(*where).order_by(col(User.id)).limit(batch_size)
            if db.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            users = list(db.exec(query))
            if not users:
                return out
            for u in users:
                before = u.status
                for k, v in values.items():
                    setattr(u, k, v)
                db.add(u)
                audit.record(db, actor, f"user.{change}", "pam_user", u.id,
                             {"username": u.username, "reason": reason, "status_before": before})
                out.append(UserChange(u.id or 0, u.username, change, reason))
            db.commit()


def check_eligibility(engine: Engine, settings: LifecycleSettings, *,
                      now: datetime | None = None,
                      actor: str = "robot:user-eligibility-check") -> list[UserChange]:
    """One pass of the user eligibility check (see module doc)."""
    now = now or utcnow()
    out = _apply(engine, [col(User.status).in_(("locked", "suspended")),
                          col(User.locked_until).is_not(None), col(User.locked_until) <= now],
                 {"status": "active", "locked_until": None, "locked_reason": None},
                 "unlocked", "temporary lock ended", actor, settings.batch_size)
    out += _apply(engine, [col(User.source) == "local",
                           col(User.status).in_(("active", "locked", "suspended", "inactive")),
                           col(User.temporary_until).is_not(None),
                           col(User.temporary_until) <= now],
                  {"status": "expired", "locked_until": None,
                   "locked_reason": "temporary user expired"},
                  "expired", "temporary user expired", actor, settings.batch_size)
    cutoff = now - timedelta(days=settings.inactive_days)
    out += _apply(engine, [col(User.source) == "local", col(User.status) == "active",
                           _last_activity() < cutoff],
                  {"status": "locked", "locked_until": None,
                   "locked_reason": f"inactive for {settings.inactive_days} days"},
                  "locked", f"no login for {settings.inactive_days} days", actor,
                  settings.batch_size)
    return out


@dataclass(frozen=True)
class LockNotice:
    user_id: int
    username: str
    lock_at: datetime
    reason: str  # inactive | temporary
    notified: bool  # False: the user has no e-mail address


def lock_notice_text(username: str, lock_at: datetime, reason: str) -> tuple[str, str]:
    """Subject and body of "User notification before lock"."""
    when = lock_at.strftime("%Y-%m-%d %H:%M UTC")
    if reason == "temporary":
        return (f"Your temporary account {username} expires on {when}",
                f"Hello {username}, your temporary account expires on {when}. After that "
                "you cannot log in; ask your administrator if you still need access.")
    return (f"Your account {username} will be locked on {when}",
            f"Hello {username}, you have not logged in for a while: your account will be "
            f"locked for inactivity on {when}. Log in before then to keep it active.")


def notify_before_lock(engine: Engine, settings: LifecycleSettings, *,
                       now: datetime | None = None,
                       actor: str = "robot:user-notification-before-lock") -> list[LockNotice]:
    """Queue "User notification before lock" for local users due to be locked (inactive)
    or expired (temporary) within ``notice_days``; once per episode (``lock_warned_at``)."""
    now = now or utcnow()
    horizon = now + timedelta(days=settings.notice_days)
    inactive_cutoff = horizon - timedelta(days=settings.inactive_days)
    last = _last_activity()
    out: list[LockNotice] = []
    rules = [
        ("inactive", [last < inactive_cutoff,
                      sa.or_(col(User.lock_warned_at).is_(None), col(User.lock_warned_at) < last)]),
        ("temporary", [col(User.temporary_until).is_not(None),
                       col(User.temporary_until) > now, col(User.temporary_until) <= horizon]),
    ]
    notice = timedelta(days=settings.notice_days)
    for reason, where in rules:
        after = 0
        while True:
            with Session(engine) as db:
                users = list(db.exec(select(User).where(
                    col(User.source) == "local", col(User.status) == "active", *where,
                    col(User.id) > after).order_by(col(User.id)).limit(settings.batch_size)))
                if not users:
                    break
                after = users[-1].id or after
                for u in users:
                    if reason == "temporary" and u.temporary_until is not None:
                        lock_at = u.temporary_until
                        if u.lock_warned_at is not None and u.lock_warned_at >= lock_at - notice:
                            continue  # already told about this expiry
                    else:
                        lock_at = (u.last_login_at or u.created_at) + timedelta(
                            days=settings.inactive_days)
                    if not u.email:
                        out.append(LockNotice(u.id or 0, u.username, lock_at, reason, False))
                        continue
                    subject, body = lock_notice_text(u.username, lock_at, reason)
                    notifications.queue(db, NOTICE_TYPE, subject, body,
                                        {"username": u.username, "lock_at": lock_at.isoformat(),
                                         "reason": reason}, recipients=[u.email])
                    u.lock_warned_at = now
                    db.add(u)
                    audit.record(db, actor, "user.lock_notice", "pam_user", u.id,
                                 {"username": u.username, "reason": reason,
                                  "lock_at": lock_at.isoformat()})
                    out.append(LockNotice(u.id or 0, u.username, lock_at, reason, True))
                db.commit()
    return out
