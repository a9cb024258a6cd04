"""Shared column helpers. Every timestamp in the store is timezone-aware UTC (``utcnow``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ..errors import PamflowError


def utcnow() -> datetime:
    """Now, as the aware UTC datetime every table stores (SQLModel's UTCDateTime)."""
    return datetime.now(UTC)


class NotStored(PamflowError):
    """A row used where a stored one is needed, but it has no primary key yet."""


class _Row(Protocol):
    id: int | None


def row_id(row: _Row) -> int:
    """The primary key of a row read from the store (or flushed to it).

    Tables declare ``id: int | None`` because a new row has no id until the store assigns
    one; code that needs the id of a stored row asks here, and gets :class:`NotStored`
    (naming the table) instead of carrying ``None`` further.
    """
    if row.id is None:
        table = getattr(row, "__tablename__", type(row).__name__)
        raise NotStored(f"{table} row has no id: it was not written to the store")
    return row.id


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core table behind a table class, for bulk statements that bypass the ORM.

    SQLAlchemy's declarative mapping sets ``__table__`` on the class; SQLModel's typing
    does not declare it, so it is read (and checked) here.
    """
    table = model.__dict__.get("__table__")
    if not isinstance(table, sa.Table):
        raise TypeError(f"{model.__name__} is not a table class")
    return table


def json_field(default_factory: Any = dict, **kw: Any) -> Any:
    """A JSON column (works on SQLite and PostgreSQL)."""
    return Field(default_factory=default_factory, sa_column=sa.Column(sa.JSON, nullable=False), **kw)


def text_field(nullable: bool = True, **kw: Any) -> Any:
    """An unbounded text column."""
    return Field(default=None, sa_column=sa.Column(sa.Text, nullable=nullable), **kw)
