"""Alarms: alarm definitions (metric, condition, duration, severity) create alarms from the
system monitor's diagnostic values (scmonitoringcreatealarmjob); closed alarms are deleted
after six months (scmonitoringdeletealarmjob).

Metrics are the system monitor's readings: ``cpu_percent`` (the average since the previous
run), ``memory_percent``, ``disk_free_percent:<mount>`` (a configured mount). A
definition's condition must hold from one reading to the next for its duration; then one
alarm opens (notified "Alarm opened", audited). It stays open, its last value updated,
until the condition no longer holds, and then closes (audited). When the condition has
held since is kept in the store (``alarm:<definition id>``).
"""

from __future__ import annotations

import operator
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit
from ..models import Alarm, AlarmDefinition, row_id, table_of
from . import MonitorError
from . import state as monitor_state
from .alerts import ACTOR, raise_alert

NOTIFICATION = "Alarm opened"
CONDITIONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
SEVERITIES = ("low", "medium", "high", "critical")
METRIC = re.compile(r"^(cpu_percent|memory_percent|disk_free_percent:/[^\x00]{0,280})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
RETENTION = timedelta(days=183)  # six months
DELETE_BATCH = 1000


class AlarmError(MonitorError, ValueError):
    """An alarm definition that cannot be used (its name, metric, condition, severity...)."""


@dataclass(frozen=True)
class Reading:
    """A diagnostic value and since when it stands (CPU: the start of its interval)."""

    value: float
    since: datetime


def define(db: Session, name: str, metric: str, condition: str, threshold: float,
           duration_seconds: int, severity: str, actor: str) -> AlarmDefinition:
    """Add an alarm definition (the caller commits), refusing what cannot be evaluated."""
    if not NAME.match(name or ""):
        raise AlarmError("alarm name: 1-100 letters, digits, spaces, dots, dashes, underscores")
    if not METRIC.match(metric or "") or ".." in metric:
        raise AlarmError(f"alarm {name}: metric must be cpu_percent, memory_percent or "
                         "disk_free_percent:/<mount>")
    if condition not in CONDITIONS:
        raise AlarmError(f"alarm {name}: condition must be one of {', '.join(CONDITIONS)}")
    if severity not in SEVERITIES:
        raise AlarmError(f"alarm {name}: severity must be one of {', '.join(SEVERITIES)}")
    if not 0 <= threshold <= 100:
        raise AlarmError(f"alarm {name}: the threshold is a percentage (0-100)")
    if not 0 <= duration_seconds <= 7 * 86400:
        raise AlarmError(f"alarm {name}: duration must be 0 to 604800 seconds")
    if db.exec(select(AlarmDefinition).where(AlarmDefinition.name == name)).first():
        raise AlarmError(f"alarm {name}: a definition of that name exists")
    row = AlarmDefinition(name=name, metric=metric, condition=condition, threshold=threshold,
                          duration_seconds=duration_seconds, severity=severity)
    db.add(row)
    db.flush()
    audit.record(db, actor, "alarm_definition.create", "alarm_definition", row.id,
                 {"name": name, "metric": metric, "condition": condition, "threshold": threshold,
                  "duration_seconds": duration_seconds, "severity": severity})
    return row


@dataclass
class AlarmsReport:
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    open_now: int = 0

    @property
    def alerts(self) -> list[str]:
        return [f"{NOTIFICATION}: {name}" for name in self.opened]


def evaluate(engine: Engine, readings: dict[str, Reading], now: datetime,
             host: str | None = None) -> AlarmsReport:
    """Open and close alarms from this run's readings."""
    host = host or socket.gethostname()
    report = AlarmsReport()
    with Session(engine) as db:
        definitions = db.exec(select(AlarmDefinition).where(col(AlarmDefinition.enabled))
                              .order_by(col(AlarmDefinition.id))).all()
        for d in definitions:
            reading = readings.get(d.metric)
            if reading is None:
                continue
            key = f"alarm:{row_id(d)}"
            kept = monitor_state.load(db, key)
            current = db.exec(select(Alarm).where(Alarm.definition_id == d.id)
                              .where(Alarm.state == "open")).first()
            detail = {"host": host, "alarm": d.name, "metric": d.metric, "value": reading.value,
                      "condition": d.condition, "threshold": d.threshold, "severity": d.severity}
            if CONDITIONS[d.condition](reading.value, d.threshold):
                since = datetime.fromisoformat(kept["since"]) if kept.get("since") else reading.since
                if not kept.get("since"):
                    monitor_state.save(db, key, {"since": since.isoformat()})
                if current is not None:
                    current.last_value = reading.value
                    db.add(current)
                elif now - since >= timedelta(seconds=d.duration_seconds):
                    alarm = Alarm(definition_id=row_id(d), name=d.name, metric=d.metric,
                                  severity=d.severity, opened_at=now, value=reading.value,
                                  last_value=reading.value)
                    db.add(alarm)
                    db.flush()
                    raise_alert(db, NOTIFICATION,
                                f"Alarm {d.name} ({d.severity}) on {host}: {d.metric} "
                                f"{reading.value:.1f}",
                                f"Alarm {d.name} opened on {host}: {d.metric} is {reading.value:.1f} "
                                f"({d.condition} {d.threshold:g}) since {since.isoformat()}, for "
                                f"at least {d.duration_seconds} s. Severity: {d.severity}.",
                                action="alarm.open", entity="alarm", entity_id=str(alarm.id),
                                detail=detail)
                    report.opened.append(d.name)
            else:
                if kept:
                    monitor_state.forget(db, key)
                if current is not None:
                    current.state, current.closed_at, current.last_value = "closed", now, reading.value
                    db.add(current)
                    audit.record(db, ACTOR, "alarm.close", "alarm", current.id, detail)
                    report.closed.append(d.name)
        report.open_now = len(db.exec(select(Alarm.id).where(Alarm.state == "open")).all())
        db.commit()
    return report


def delete_closed(engine: Engine, now: datetime, retention: timedelta = RETENTION,
                  batch: int = DELETE_BATCH, actor: str = ACTOR) -> int:
    """Delete the alarms closed before ``now - retention``, ``batch`` rows per transaction
    (writers are never held long); the count is recorded in the audit log."""
    table = table_of(Alarm)
    cutoff = now - retention
    deleted = 0
    while True:
        with engine.begin() as conn:
            ids = conn.execute(sa.select(table.c.id).where(table.c.state == "closed")
                               .where(table.c.closed_at < cutoff).limit(batch)).scalars().all()
            if not ids:
                break
            conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
        deleted += len(ids)
    if deleted:
        with Session(engine) as db:
            audit.record(db, actor, "alarm.delete_closed", "alarm", None,
                         {"deleted": deleted, "closed_before": cutoff.isoformat()})
            db.commit()
    return deleted
