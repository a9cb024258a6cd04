"""Queued notifications, the tamper-evident audit log and system parameters."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class Notification(SQLModel, table=True):
    """A notification from the catalogue, queued for the email sender (one row per event).

    ``subject``/``body``/``html`` are rendered from the type's templates when queued.
    The sender routes a queued row into :class:`NotificationMessage` rows (one per recipient
    and channel) and sets ``state``: ``routed``, ``digest`` (waits for the daily digest),
    ``unrouted`` (no route matched: kept, visible in ``pamflow notifications list``).
    The same event queued again within the repeat window (same ``dedup_key``) only counts
    in ``repeats``/``last_seen_at``; it is not sent again.
    """

    __tablename__ = "notification"
    __table_args__ = (sa.Index("ix_notification_dedup", "tenant", "type", "dedup_key"),)

    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(index=True)  # catalogue name, e.g. "Lost of connectivity"
    family: str  # catalogue family, e.g. "Devices"
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False,
                                                               server_default="default"))
    severity: str = "info"
    subject: str
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    html: str | None = text_field()
    recipients: list[str] = json_field(default_factory=list)
    context: dict = json_field()
    state: str = Field(default="queued", index=True)  # queued | routed | digest | unrouted
    dedup_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    repeats: int = 0
    last_seen_at: datetime | None = None
    attempts: int = 0
    error: str | None = text_field()
    created_at: datetime = Field(default_factory=utcnow, index=True)
    routed_at: datetime | None = None
    sent_at: datetime | None = None


class NotificationMessage(SQLModel, table=True):
    """One message to one recipient on one channel, for one or many notifications (storm
    control groups them; the daily digest gathers a day's). The unit of delivery.

    ``message_id`` is fixed when the row is written, so a re-sent message carries the same
    Message-ID. A sender claims rows by setting ``lease_owner``/``lease_until`` and marks
    each ``sent`` in its own commit right after the server accepted it.
    """

    __tablename__ = "notification_message"
    __table_args__ = (sa.Index("ix_notification_message_due", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(sa_column=sa.Column(sa.String(255), nullable=False, unique=True))
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False))
    channel: str = "email"  # email | syslog | webhook
    recipient: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    type: str  # catalogue type, or "Daily digest"
    severity: str = "info"
    subject: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    text: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    html: str | None = text_field()
    notification_ids: list[int] = json_field(default_factory=list)
    secret_ref: str | None = None  # webhook: the notification secret that signs it
    state: str = Field(default="pending", index=True)  # pending | sent | dead
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    lease_owner: str | None = None
    lease_until: datetime | None = None
    error: str | None = text_field()
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class NotificationRoute(SQLModel, table=True):
    """Who gets what: a type, a family or everything (``*``) of one tenant goes to a
    recipient (``user:NAME``, ``group:NAME``, an e-mail address, a syslog target
    ``udp://host:port`` / ``tcp://host:port``, or a webhook URL) on a channel, at once
    (``immediate``) or in the daily digest (``digest``)."""

    __tablename__ = "notification_route"
    __table_args__ = (sa.UniqueConstraint("tenant", "match", "recipient", "channel",
                                          name="uq_notification_route"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False))
    match: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))  # type | family | *
    recipient: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    channel: str = "email"
    mode: str = "immediate"  # immediate | digest
    min_severity: str = "info"
    secret_ref: str | None = None  # webhook: name of the notification secret that signs
    enabled: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class NotificationSecret(SQLModel, table=True):
    """A secret the notification channels need (SMTP password, webhook signing key),
    sealed by pamflow's vault (``notification_aad``), never in a Prefect block."""

    __tablename__ = "notification_secret"

    name: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    ciphertext: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class MfaToken(SQLModel, table=True):
    """A one-time code mailed to a user: sealed by the vault (never stored readable),
    expiring, single use, a few tries."""

    __tablename__ = "mfa_token"

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False))
    username: str = Field(index=True)
    code: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # vault: mfa_aad(id)
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class AuditLog(SQLModel, table=True):
    """Append-only; each row carries the hash of the previous one (a hash chain)."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str = Field(index=True)
    entity: str
    entity_id: str | None = None
    detail: dict = json_field()
    prev_hash: str
    hash: str


class SystemParameter(SQLModel, table=True):
    __tablename__ = "system_parameter"

    key: str = Field(primary_key=True)
    value: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    description: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class DutyState(SQLModel, table=True):
    """When each duty (``pamflow.operations.duties``) is next due, and what it last did.

    A service instance runs a duty only after moving ``next_due_at`` forward by a
    conditional update, so two instances never run one slot twice."""

    __tablename__ = "duty"

    name: str = Field(primary_key=True)
    next_due_at: datetime = Field(default_factory=utcnow)
    owner: str | None = None  # the instance that ran it last
    runs: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_found: int = 0  # how many things the last run did
    last_work_at: datetime | None = None  # the last run that found something to do
    last_error: str | None = text_field()
