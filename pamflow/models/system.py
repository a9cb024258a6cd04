"""Queued notifications, the tamper-evident audit log and system parameters."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class Notification(SQLModel, table=True):
    """A notification from the catalogue, queued for the email sender."""

    __tablename__ = "notification"

    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(index=True)  # catalogue name, e.g. "Lost of connectivity"
    family: str  # catalogue family, e.g. "Devices"
    subject: str
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    recipients: list[str] = json_field(default_factory=list)
    context: dict = json_field()
    state: str = Field(default="queued", index=True)  # queued | sent | failed
    attempts: int = 0
    error: str | None = text_field()
    created_at: datetime = Field(default_factory=utcnow, index=True)
    sent_at: datetime | None = None


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
