"""The tamper-evident audit log: each row's hash covers its content and the previous hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, select

from .models import AuditLog, utcnow

GENESIS = "0" * 64
# json.dumps(..., sort_keys=True, default=str) builds a new encoder on every call; one
# shared encoder gives the same text (the hash is unchanged) at a fraction of the cost
_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def _digest(prev_hash: str, at: datetime, actor: str, action: str, entity: str,
            entity_id: str | None, detail: dict) -> str:
    """The hash of a row's content chained to the previous row's hash."""
    payload = _ENCODER.encode(
        {
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "entity": entity,
            "entity_id": entity_id,
            "detail": detail,
        }
    )
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def _row_digest(prev_hash: str, row: Any) -> str:
    """``_digest`` of a stored row (an ``AuditLog`` or a result row with its columns)."""
    return _digest(prev_hash, row.at, row.actor, row.action, row.entity, row.entity_id, row.detail)


def _chain_head(db: Session) -> str:
    """The newest hash, read under the database's write lock so concurrent writers keep one chain.

    PostgreSQL: an advisory transaction lock. SQLite: a no-op write takes the database's
    write lock before the read. Within one transaction the head is then kept in memory, so
    a robot recording thousands of rows reads it once.
    """
    tx = db.connection().get_transaction()
    cached = db.info.get("audit_head")
    if cached is not None and cached[0] is tx:
        return cached[1]
    if db.get_bind().dialect.name == "postgresql":
        db.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
    else:
        db.execute(sa.text("UPDATE audit_log SET id = id WHERE 0"))
    last = db.exec(select(col(AuditLog.hash)).order_by(col(AuditLog.id).desc()).limit(1)).first()
    return last or GENESIS


def record(
    db: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: object = None,
    detail: dict | None = None,
) -> AuditLog:
    """Append an audit row in ``db``'s transaction (the caller commits)."""
    prev = _chain_head(db)
    at, key, body = utcnow(), None if entity_id is None else str(entity_id), detail or {}
    row = AuditLog(
        at=at,
        actor=actor,
        action=action,
        entity=entity,
        entity_id=key,
        detail=body,
        prev_hash=prev,
        hash=_digest(prev, at, actor, action, entity, key, body),
    )
    db.add(row)
    db.info["audit_head"] = (db.connection().get_transaction(), row.hash)
    return row


@dataclass(frozen=True)
class ChainCheck:
    """The outcome of walking the audit chain: rows checked (up to and including the first
    broken one), and the first broken row's id and what is wrong with it (None: intact)."""

    rows: int
    broken_at: int | None = None
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


_ENTRY_COLUMNS = ("id", "at", "actor", "action", "entity", "entity_id", "detail", "prev_hash", "hash")


def check_chain(db: Session, batch: int = 1000) -> ChainCheck:
    """Walk the chain in id order, ``batch`` rows at a time (a server-side cursor on
    PostgreSQL: the log is never held in memory), and stop at the first row whose
    ``prev_hash`` is not the previous row's hash (a row before it was removed, or the chain
    was re-linked) or whose content no longer hashes to its ``hash`` (it was changed).

    The last row's own removal cannot be seen from the chain alone.
    """
    table = SQLModel.metadata.tables[AuditLog.__tablename__]
    query = sa.select(*(table.c[name] for name in _ENTRY_COLUMNS)).order_by(table.c.id)
    prev, checked, previous_id = GENESIS, 0, None
    for row in db.execute(query, execution_options={"yield_per": batch}):
        checked += 1
        if row.prev_hash != prev:
            after = f"row {previous_id}" if previous_id is not None else "the start of the log"
            return ChainCheck(checked, row.id, f"its prev_hash does not match {after}: a row was "
                                               "removed or inserted there, or the chain re-linked")
        if _row_digest(prev, row) != row.hash:
            return ChainCheck(checked, row.id, "its content does not match its hash: it was changed "
                                               "after it was written")
        prev, previous_id = row.hash, row.id
    return ChainCheck(checked)


def verify_chain(db: Session) -> int | None:
    """The id of the first row whose hash does not match, or None when the chain is intact."""
    return check_chain(db).broken_at


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def entries(db: Session, *, actor: str | None = None, action: str | None = None,
            entity: str | None = None, entity_id: str | None = None,
            since: datetime | None = None, until: datetime | None = None,
            limit: int = 100) -> list[AuditLog]:
    """Audit rows, newest first. ``actor`` and ``action`` match exactly, or with ``*`` as a
    wildcard (``robot:*``, ``reservation.*``); ``entity`` (and ``entity_id``) name the object;
    ``since``/``until`` bound ``at`` (inclusive, exclusive)."""
    query = select(AuditLog)
    for column, value in ((col(AuditLog.actor), actor), (col(AuditLog.action), action)):
        if value is not None:
            query = query.where(column.like(_like(value), escape="\\") if "*" in value
                                else column == value)
    if entity is not None:
        query = query.where(col(AuditLog.entity) == entity)
    if entity_id is not None:
        query = query.where(col(AuditLog.entity_id) == entity_id)
    if since is not None:
        query = query.where(col(AuditLog.at) >= since)
    if until is not None:
        query = query.where(col(AuditLog.at) < until)
    return list(db.exec(query.order_by(col(AuditLog.id).desc()).limit(limit)))
