"""What ``pamflow notifications list|show|resend`` reads and changes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ..models import Notification, NotificationMessage
from ..models._base import table_of, utcnow

MESSAGE_STATES = ("pending", "sent", "dead", "digest", "merged")
NOTIFICATION_STATES = ("queued", "routed", "unrouted")


def list_messages(db: Session, *, state: str | None = None, type_name: str | None = None,
                  recipient: str | None = None, tenant: str | None = None,
                  since: datetime | None = None, limit: int = 50) -> list[NotificationMessage]:
    q = select(NotificationMessage)
    if state:
        q = q.where(col(NotificationMessage.state) == state)
    if type_name:
        q = q.where(col(NotificationMessage.type) == type_name)
    if recipient:
        q = q.where(col(NotificationMessage.recipient) == recipient)
    if tenant:
        q = q.where(col(NotificationMessage.tenant) == tenant)
    if since:
        q = q.where(col(NotificationMessage.created_at) >= since)
    return list(db.exec(q.order_by(sa.desc(col(NotificationMessage.id))).limit(limit)).all())


def list_notifications(db: Session, *, state: str | None = None, type_name: str | None = None,
                       tenant: str | None = None, limit: int = 50) -> list[Notification]:
    q = select(Notification)
    if state:
        q = q.where(col(Notification.state) == state)
    if type_name:
        q = q.where(col(Notification.type) == type_name)
    if tenant:
        q = q.where(col(Notification.tenant) == tenant)
    return list(db.exec(q.order_by(sa.desc(col(Notification.id))).limit(limit)).all())


def resend(db: Session, message_ids: Sequence[int], tenant: str | None = None) -> int:
    """Send dead (or already sent) messages again, with the same Message-ID; the caller commits.
    Returns how many were put back."""
    m = table_of(NotificationMessage).c
    q = sa.update(table_of(NotificationMessage)).where(
        m.id.in_(list(message_ids)), m.state.in_(["dead", "sent"]))
    if tenant:
        q = q.where(m.tenant == tenant)
    done = db.execute(q.values(state="pending", attempts=0, next_attempt_at=utcnow(),
                               lease_owner=None, lease_until=None))
    return getattr(done, "rowcount", 0) or 0


def requeue_unrouted(db: Session, notification_ids: Sequence[int]) -> int:
    """Route unrouted notifications again (after a route was added)."""
    n = table_of(Notification).c
    done = db.execute(sa.update(table_of(Notification)).where(
        n.id.in_(list(notification_ids)), n.state == "unrouted").values(state="queued"))
    return getattr(done, "rowcount", 0) or 0
