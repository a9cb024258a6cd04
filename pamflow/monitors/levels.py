"""Alerting once per level: a thing's level kept in the store, a notification when it
rises, an audit record when it falls back."""

from __future__ import annotations

from sqlmodel import Session

from .. import audit
from . import state as monitor_state
from .alerts import ACTOR, raise_alert


def track_level(db: Session, key: str, level: int, *, type_name: str, subject: str, body: str,
                action: str, entity: str, entity_id: str, detail: dict) -> tuple[int, bool]:
    """Keep ``level`` (0: fine) for ``key``; queue ``type_name`` when it rose, audit when it
    fell. Returns the previous level and whether an alert was raised."""
    kept = monitor_state.load(db, key)
    previous = int(kept.get("level", 0))
    raised = False
    if level > previous:
        raise_alert(db, type_name, subject, body, action=action, entity=entity,
                    entity_id=entity_id, detail=detail)
        raised = True
    elif level < previous:
        audit.record(db, ACTOR, action.rsplit(".", 1)[0] + ".recovered", entity, entity_id,
                     {**detail, "previous_level": previous})
    if level != previous or not kept:
        monitor_state.save(db, key, {"level": level, **{k: v for k, v in detail.items()
                                                        if isinstance(v, int | float | str)}})
    return previous, raised
