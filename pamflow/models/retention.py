"""Tenants (soft-deleted, then cleaned), archive batches of purged rows, and audit seals."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class Tenant(SQLModel, table=True):
    """A tenant. Rows elsewhere name their tenant by this ``name``; ``deleted_at`` marks a
    soft delete (the tenant clean robot deletes its data after the grace period and sets
    ``cleaned_at``)."""

    __tablename__ = "tenant"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(255), unique=True, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None
    deleted_by: str | None = None
    cleaned_at: datetime | None = None


class ArchiveBatch(SQLModel, table=True):
    """One batch of expired rows moved out of the store into a compressed, checksummed
    archive file (the warehouse). Written in the transaction that deletes the rows.

    ``state``: ``archived`` (the file holds the rows) or ``expired`` (the warehouse purge
    deleted the file after its retention; the record, with its checksum, stays).
    """

    __tablename__ = "archive_batch"
    __table_args__ = (sa.Index("ix_archive_batch_dataset_tenant", "dataset", "tenant"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset: str = Field(sa_column=sa.Column(sa.String(63), nullable=False))
    tenant: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    control_date: datetime  # rows older than this were expired
    first_id: int
    last_id: int
    rows: int  # rows of the dataset's own table
    child_rows: int = 0  # dependent rows archived with them (session events of sessions)
    sha256: str
    size: int
    path: str = Field(sa_column=sa.Column(sa.Text, nullable=False, unique=True))  # archive-relative
    seal_number: int | None = None  # audit_log batches: the seal block they hold
    state: str = Field(default="archived", index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    expired_at: datetime | None = None
    detail: dict = json_field()


class AuditSealKey(SQLModel, table=True):
    """An Ed25519 key that signs audit seals; the private key is vault-encrypted."""

    __tablename__ = "audit_seal_key"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(sa_column=sa.Column(sa.String(32), unique=True, nullable=False))
    public_key: str  # base64 of the raw 32 bytes
    secret: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # vault: seal_key_aad(key_id)
    created_at: datetime = Field(default_factory=utcnow)
    retired_at: datetime | None = None


class AuditSeal(SQLModel, table=True):
    """A sealed block of the audit hash chain: rows ``after_id < id <= last_id``, their
    number and the hash of the last one, signed; ``prev_digest`` chains the seals."""

    __tablename__ = "audit_seal"

    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(sa_column=sa.Column(sa.Integer, unique=True, nullable=False))
    at: datetime = Field(default_factory=utcnow)
    after_id: int
    last_id: int
    count: int
    head_hash: str
    prev_digest: str
    key_id: str
    signature: str  # base64
    archived_at: datetime | None = None  # its rows were moved to the archive
    note: str | None = text_field()
