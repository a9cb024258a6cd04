"""The tamper-evident audit log: each row's hash covers its content and the previous hash."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from .models import AuditLog, utcnow

GENESIS = "0" * 64


def _digest(prev_hash: str, at: datetime, actor: str, action: str, entity: str,
            entity_id: str | None, detail: dict) -> str:
    """The hash of a row's content chained to the previous row's hash."""
    payload = json.dumps(
        {
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "entity": entity,
            "entity_id": entity_id,
            "detail": detail,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def _row_digest(prev_hash: str, row: AuditLog) -> str:
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


def verify_chain(db: Session) -> int | None:
    """The id of the first row whose hash does not match, or None when the chain is intact."""
    prev = GENESIS
    for row in db.exec(select(AuditLog).order_by(col(AuditLog.id))):
        if row.prev_hash != prev or _row_digest(prev, row) != row.hash:
            return row.id
        prev = row.hash
    return None
