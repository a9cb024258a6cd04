"""The operation queue: change, verify, reconcile, activate, certificate and discovery work."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class OperationKind(StrEnum):
    change = "change"
    verify = "verify"
    reconcile = "reconcile"
    activate = "activate"
    certificate = "certificate"
    discovery = "discovery"


class OperationState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Operation(SQLModel, table=True):
    """One unit of work for the operation executor, claimed under a lease."""

    __tablename__ = "operation"
    __table_args__ = (
        sa.Index("ix_operation_claim", "state", "priority", "not_before"),
        # one running operation per credential at a time
        sa.Index(
            "uq_operation_running_credential",
            "credential_id",
            unique=True,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        ),
        # enqueue coalesces: one queued operation of a kind per credential
        sa.Index(
            "uq_operation_queued_credential_kind",
            "credential_id",
            "kind",
            unique=True,
            sqlite_where=sa.text("state = 'queued'"),
            postgresql_where=sa.text("state = 'queued'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)
    state: str = Field(default=OperationState.queued)
    priority: int = 100  # lower runs first
    credential_id: int | None = Field(default=None, foreign_key="credential.id", index=True)
    device_id: int | None = Field(default=None, foreign_key="device.id", index=True)
    not_before: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    attempts: int = 0
    max_attempts: int = 5
    retryable: bool = False  # set by a failure that trying later may fix (Retry re-queues it)
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    # fencing token: bumped by every claim, so a writer whose lease was lost (its
    # operation re-claimed meanwhile, even by the same owner) is refused
    lease_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    step: str | None = None  # last protocol step reached (write-ahead)
    requested_by: str = "system"
    reason: str | None = None
    parameters: dict = json_field()
    result: dict = json_field()
    error: str | None = text_field()
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
