"""Reading and writing a monitor's state (one JSON row per key in ``monitor_state``)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from ..models import MonitorState, utcnow


def load(db: Session, key: str) -> dict:
    """The state kept under ``key`` (an empty dict the first time)."""
    row = db.get(MonitorState, key)
    return dict(row.state) if row is not None else {}


def save(db: Session, key: str, state: dict) -> None:
    """Keep ``state`` under ``key`` in ``db``'s transaction (the caller commits)."""
    row = db.get(MonitorState, key)
    if row is None:
        row = MonitorState(key=key, state=state)
    else:
        row.state = state
        row.updated_at = utcnow()
    db.add(row)


def keys(db: Session, prefix: str) -> list[str]:
    """The keys that start with ``prefix``, sorted."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = select(col(MonitorState.key)).where(col(MonitorState.key).like(escaped + "%", escape="\\"))
    return sorted(db.exec(query))


def forget(db: Session, key: str) -> None:
    row = db.get(MonitorState, key)
    if row is not None:
        db.delete(row)
