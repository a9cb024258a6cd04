"""Shared column helpers. Every timestamp in the store is timezone-aware UTC (``utcnow``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field


def utcnow() -> datetime:
    """Now, as the aware UTC datetime every table stores (SQLModel's UTCDateTime)."""
    return datetime.now(UTC)


def json_field(default_factory: Any = dict, **kw: Any) -> Any:
    """A JSON column (works on SQLite and PostgreSQL)."""
    return Field(default_factory=default_factory, sa_column=sa.Column(sa.JSON, nullable=False), **kw)


def text_field(nullable: bool = True, **kw: Any) -> Any:
    """An unbounded text column."""
    return Field(default=None, sa_column=sa.Column(sa.Text, nullable=nullable), **kw)
