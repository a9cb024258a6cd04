"""The configuration auditor: every change to a robot's interval, instances or status.

A robot is a Prefect deployment. Its interval is its schedules (cron, interval or rrule,
timezone, active), its instances the deployment's concurrency limit and collision
strategy, its status the paused switch. Prefect 3.8.8 emits ``prefect.deployment.updated``
only for some of these (``paused`` and ``concurrency_options`` through PATCH
/deployments/{id}, ``concurrency_limit_id`` when a limit is added or removed) and nothing
for a schedule change, for the UI's pause/resume endpoints or for a new value of an
existing concurrency limit. So the store keeps a snapshot of each deployment and every pass
compares the deployment with it; the events read since the last pass are applied first,
so a change Prefect announced is dated when it happened, and a pause undone before the
next pass is still recorded.

Each change becomes a ``ConfigChange`` row (robot, field, before, after, who if known,
when) and an audit-log row in the same transaction; syslog lines are sent from the
``ConfigChange`` rows afterwards and marked sent, so an unreachable syslog receiver loses
nothing (the next pass sends the backlog). No Prefect import: the Prefect layer passes in
the deployments and events as plain dicts (``model_dump(mode="json")``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit
from ..models import ConfigChange, DeploymentSnapshot, SystemParameter, utcnow
from ..syslog import SyslogError, SyslogMessage, SyslogSender, SyslogTarget

log = logging.getLogger(__name__)

FIELDS = ("schedule", "concurrency_limit", "collision_strategy", "paused")
BASELINE_KEY = "configuration_auditor.baseline_at"
EVENTS_KEY = "configuration_auditor.events"
ACTION = "robot.configuration_changed"
VALUE_MAX = 1000  # a value kept in the store and sent to syslog is cut here
SEEN_EVENT_IDS = 500


def _clip(value: str | None) -> str | None:
    if value is None or len(value) <= VALUE_MAX:
        return value
    return value[:VALUE_MAX - 1] + "…"


def describe_schedule(item: dict[str, Any]) -> str:
    """One schedule as text: ``cron "*/15 * * * *" UTC``, ``every 900s``, ``rrule ...``;
    `` (inactive)`` when switched off."""
    sched = item.get("schedule") or {}
    tz = sched.get("timezone") or "UTC"
    if "cron" in sched:
        text = f'cron "{sched["cron"]}" {tz}'
    elif "interval" in sched:
        interval = sched["interval"]
        seconds = interval if isinstance(interval, int | float) else _iso_seconds(interval)
        text = f"every {seconds:g}s" if seconds is not None else f"every {interval}"
        if sched.get("anchor_date"):
            text += f" from {sched['anchor_date']}"
        text += f" {tz}"
    elif "rrule" in sched:
        text = f'rrule "{sched["rrule"]}" {tz}'
    else:
        text = json.dumps(sched, sort_keys=True, default=str)
    if item.get("active") is False:
        text += " (inactive)"
    return text


def _iso_seconds(value: Any) -> float | None:
    """Seconds of an interval serialised by pydantic (``PT15M``, ``P1D``) or as a number."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    import re

    m = re.fullmatch(r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                     r"(?:(\d+(?:\.\d+)?)S)?)?", value)
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (float(g or 0) for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


@dataclass(frozen=True)
class RobotConfig:
    """What the auditor watches in one deployment, as comparable text values."""

    deployment_id: str
    robot: str
    flow_name: str
    settings: dict[str, str]
    updated: datetime | None = None
    schedules_updated: datetime | None = None
    who: str | None = None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _who(updated_by: Any) -> str | None:
    """Who last changed the deployment, when Prefect knows (Prefect Cloud fills
    ``updated_by``; an OSS server leaves it empty)."""
    if isinstance(updated_by, dict):
        name = updated_by.get("display_value") or updated_by.get("id")
        kind = updated_by.get("type")
        if name:
            return f"{kind}:{name}" if kind else str(name)
    return None


def robot_config(deployment: dict[str, Any], flow_name: str) -> RobotConfig:
    """The watched settings of a deployment (a ``DeploymentResponse`` as JSON)."""
    schedules = deployment.get("schedules") or []
    limit = (deployment.get("global_concurrency_limit") or {}).get("limit")
    options = deployment.get("concurrency_options") or {}
    settings = {
        "schedule": "; ".join(sorted(describe_schedule(s) for s in schedules)) or "none",
        "concurrency_limit": "none" if limit is None else str(limit),
        "collision_strategy": str(options.get("collision_strategy") or "ENQUEUE"),
        "paused": "true" if deployment.get("paused") else "false",
    }
    stamps = [t for t in (_parse_time(s.get("updated")) for s in schedules) if t is not None]
    return RobotConfig(
        deployment_id=str(deployment["id"]),
        robot=str(deployment.get("name") or deployment["id"]),
        flow_name=flow_name,
        settings={k: _clip(v) or "" for k, v in settings.items()},
        updated=_parse_time(deployment.get("updated")),
        schedules_updated=max(stamps) if stamps else None,
        who=_who(deployment.get("updated_by")),
    )


@dataclass(frozen=True)
class DeploymentEvent:
    """A ``prefect.deployment.updated`` event, reduced to the watched fields it reports."""

    id: str
    occurred: datetime
    deployment_id: str
    robot: str
    changes: dict[str, tuple[str, str]]  # field -> (before, after)


def _option(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("collision_strategy") or "ENQUEUE")
    return "ENQUEUE"


def deployment_event(event: dict[str, Any]) -> DeploymentEvent | None:
    """The watched changes an event reports, or None when it reports none of them."""
    resource = event.get("resource") or {}
    rid = str(resource.get("prefect.resource.id", ""))
    occurred = _parse_time(event.get("occurred"))
    if not rid.startswith("prefect.deployment.") or occurred is None:
        return None
    updates = (event.get("payload") or {}).get("updates") or {}
    changes: dict[str, tuple[str, str]] = {}
    if isinstance(updates, dict):
        paused = updates.get("paused")
        if isinstance(paused, dict):
            changes["paused"] = ("true" if paused.get("from") else "false",
                                 "true" if paused.get("to") else "false")
        options = updates.get("concurrency_options")
        if isinstance(options, dict):
            changes["collision_strategy"] = (_option(options.get("from")),
                                             _option(options.get("to")))
    changes = {k: v for k, v in changes.items() if v[0] != v[1]}
    if not changes:
        return None
    return DeploymentEvent(id=str(event.get("id")), occurred=occurred,
                           deployment_id=rid.removeprefix("prefect.deployment."),
                           robot=str(resource.get("prefect.resource.name") or ""),
                           changes=changes)


@dataclass
class AuditPass:
    """What one pass saw and recorded."""

    robots: int = 0
    baseline: bool = False
    events_applied: int = 0
    changes: list[ConfigChange] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [change_row(c) for c in self.changes]


def change_row(c: ConfigChange) -> dict[str, Any]:
    return {"robot": c.robot, "field": c.field, "before": c.before, "after": c.after,
            "who": c.who or "unknown", "at": c.at.isoformat(), "source": c.source}


def _param(db: Session, key: str) -> SystemParameter | None:
    return db.get(SystemParameter, key)


def _set_param(db: Session, key: str, value: str, description: str) -> None:
    row = db.get(SystemParameter, key)
    if row is None:
        row = SystemParameter(key=key, value=value, description=description)
    row.value, row.updated_at = value, utcnow()
    db.add(row)


def _event_position(row: SystemParameter | None) -> tuple[list[str], datetime | None]:
    """(ids of the events already applied, occurred time to read events from)."""
    if row is None:
        return [], None
    try:
        value = json.loads(row.value)
        return [str(i) for i in value.get("ids") or []], _parse_time(value.get("since"))
    except (ValueError, AttributeError):
        return [], None


def events_since(engine: Engine) -> datetime | None:
    """The occurred time from which events are read on the next pass (None: from now)."""
    with Session(engine) as db:
        return _event_position(_param(db, EVENTS_KEY))[1]


def _record(db: Session, config: RobotConfig | DeploymentSnapshot, field_name: str,
            before: str | None, after: str | None, at: datetime, source: str,
            who: str | None) -> ConfigChange:
    flow_name = config.flow_name
    change = ConfigChange(at=at, robot=config.robot, flow_name=flow_name,
                          deployment_id=config.deployment_id, field=field_name,
                          before=_clip(before), after=_clip(after), who=who, source=source)
    db.add(change)
    audit.record(db, who or "prefect-api:unknown", ACTION, "robot", config.robot, {
        "field": field_name, "before": change.before, "after": change.after,
        "who": who, "at": at.isoformat(), "source": source, "flow": flow_name,
        "deployment_id": config.deployment_id, "recorded_by": "robot:configuration-auditor"})
    return change


def audit_configuration(engine: Engine, robots: Sequence[RobotConfig],
                        events: Iterable[DeploymentEvent] = (),
                        events_until: datetime | None = None) -> AuditPass:
    """Compare the deployments with their snapshots, record each change, keep the new
    snapshots; all in one transaction. The first pass ever only takes the baseline."""
    result = AuditPass(robots=len(robots))
    now = utcnow()
    with Session(engine, expire_on_commit=False) as db:
        snapshots = {s.deployment_id: s for s in db.exec(select(DeploymentSnapshot))}
        baseline = _param(db, BASELINE_KEY) is None
        result.baseline = baseline
        # 1. the events Prefect emitted since the last pass, oldest first
        state = _param(db, EVENTS_KEY)
        seen, last = _event_position(state)
        for ev in sorted(events, key=lambda e: e.occurred):
            if ev.id in seen:
                continue
            seen.append(ev.id)
            last = max(last, ev.occurred) if last else ev.occurred
            snap = snapshots.get(ev.deployment_id)
            if snap is None or baseline:
                continue
            current = dict(snap.snapshot)
            for name, (before, after) in ev.changes.items():
                if current.get(name) == before:  # not yet seen by a snapshot comparison
                    result.changes.append(_record(db, snap, name, before, after, ev.occurred,
                                                  "event", None))
                    current[name] = after
                    result.events_applied += 1
            snap.snapshot = current
            db.add(snap)
        # 2. the deployments as they are now
        present = set()
        for config in robots:
            present.add(config.deployment_id)
            snap = snapshots.get(config.deployment_id)
            if snap is None:
                if not baseline:
                    snap = DeploymentSnapshot(deployment_id=config.deployment_id,
                                              robot=config.robot, flow_name=config.flow_name)
                    result.changes.append(_record(
                        db, config, "deployment", None, "created: " + ", ".join(
                            f"{k}={v}" for k, v in config.settings.items()),
                        config.updated or now, "snapshot", config.who))
                else:
                    snap = DeploymentSnapshot(deployment_id=config.deployment_id,
                                              robot=config.robot, flow_name=config.flow_name)
            else:
                for name in FIELDS:
                    old, new = snap.snapshot.get(name), config.settings.get(name)
                    if old is not None and old != new:
                        at = (config.schedules_updated if name == "schedule" else
                              config.updated) or now
                        at = min(at, now)
                        result.changes.append(_record(db, config, name, old, new, at,
                                                      "snapshot", config.who))
            snap.robot, snap.flow_name = config.robot, config.flow_name
            snap.snapshot, snap.seen_at = dict(config.settings), now
            db.add(snap)
        # 3. deployments that are gone
        for gone_id, snap in snapshots.items():
            if gone_id not in present:
                result.changes.append(_record(db, snap, "deployment", "present", "deleted",
                                              now, "snapshot", None))
                db.delete(snap)
        if baseline:
            _set_param(db, BASELINE_KEY, now.isoformat(),
                       "When the configuration auditor took its first snapshot of the robots")
            audit.record(db, "robot:configuration-auditor", "robot.configuration_baseline",
                         "robot", None, {"robots": len(robots)})
        since = max(t for t in (last, events_until) if t is not None) \
            if (last or events_until) else None
        _set_param(db, EVENTS_KEY, json.dumps({
            "since": since.isoformat() if since else None, "ids": seen[-SEEN_EVENT_IDS:]}),
            "The configuration auditor's position in Prefect's deployment events")
        db.commit()
    return result


def syslog_message(change: ConfigChange) -> SyslogMessage:
    """The syslog line of one configuration change."""
    who = change.who or "unknown"
    return SyslogMessage(
        text=(f"robot {change.robot}: {change.field} changed from {change.before or '-'} "
              f"to {change.after or '-'} by {who} at {change.at.isoformat()}"),
        msgid="CONFIG_CHANGE",
        severity="notice",
        data={"robot": change.robot, "field": change.field, "before": change.before or "",
              "after": change.after or "", "who": who, "at": change.at.isoformat(),
              "source": change.source, "id": str(change.id)},
        timestamp=change.at,
    )


@dataclass
class SyslogDelivery:
    sent: int = 0
    pending: int = 0
    error: str | None = None


def deliver_to_syslog(engine: Engine, target: SyslogTarget | None,
                      limit: int = 1000) -> SyslogDelivery:
    """Send the configuration changes syslog does not have yet, oldest first, over one
    connection; each is marked sent as soon as it is out. Without a target nothing is
    sent and the changes wait for one."""
    out = SyslogDelivery()
    with Session(engine) as db:
        pending = list(db.exec(select(ConfigChange)
                               .where(col(ConfigChange.syslog_state) == "pending")
                               .order_by(col(ConfigChange.id)).limit(limit)))
        if target is None:
            out.pending = len(pending)
            out.error = "no syslog target configured" if pending else None
            return out
        try:
            with SyslogSender(target) as sender:
                for change in pending:
                    change.syslog_attempts += 1
                    sender.send(syslog_message(change))
                    change.syslog_state, change.syslog_sent_at = "sent", utcnow()
                    change.syslog_error = None
                    db.add(change)
                    db.commit()
                    out.sent += 1
        except SyslogError as exc:
            out.error = str(exc)
            log.warning("configuration changes not sent to syslog yet: %s", exc)
            db.rollback()
            for change in pending[out.sent:]:
                change.syslog_error = str(exc)
                db.add(change)
            db.commit()
        out.pending = len(pending) - out.sent
    return out
