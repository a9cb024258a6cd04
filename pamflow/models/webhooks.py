"""Webhook sources (one secret each, encrypted) and the gateway's outbox of accepted calls."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class WebhookSource(SQLModel, table=True):
    """A system allowed to call ``POST /hooks/{name}``; its HMAC secret is vault-encrypted.

    After ``rotate-secret`` the previous secret stays in ``previous_secret`` until
    ``previous_valid_until`` (a grace period, none by default).
    """

    __tablename__ = "webhook_source"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(63), nullable=False, unique=True))
    secret: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # vault: webhook_aad(name, ...)
    previous_secret: str | None = text_field()
    previous_valid_until: datetime | None = None
    secret_version: int = 1
    # the tenant this source acts for: the gateway sets every payload's tenant from it
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False,
                                                               server_default="default"))
    enabled: bool = True
    created_at: datetime = Field(default_factory=utcnow)
    rotated_at: datetime | None = None


class WebhookDelivery(SQLModel, table=True):
    """One accepted webhook call: its delivery id (replay guard) and the outbox row.

    Written in the same transaction that records the delivery id, before the 202 answer;
    ``delivered_at`` is set once Prefect's ``/events`` took the event (2xx). A forwarder
    claims undelivered rows by setting ``lease_until``. ``attempts`` counts the posts of
    the row taken from the store, ``failures`` the answers that may be the row's fault (a
    5xx other than 502-504); ``dead_at`` is set when Prefect refused the event itself
    (400, 413, 422), it cannot be encoded, or ``failures`` reached the limit: a dead row is
    no longer forwarded and ``last_error`` says why (``pamflow webhooks outbox``).
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.UniqueConstraint("source", "delivery_id", name="uq_webhook_delivery_source_delivery"),
        sa.Index("ix_webhook_delivery_pending", "delivered_at", "lease_until"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=sa.Column(sa.String(36), nullable=False, unique=True))
    source: str = Field(sa_column=sa.Column(sa.String(63), nullable=False))
    delivery_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    event: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    payload: dict = json_field()
    received_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
    lease_until: datetime | None = None
    attempts: int = 0
    failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    dead_at: datetime | None = None
    last_error: str | None = text_field()
