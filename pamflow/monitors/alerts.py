"""Raising a monitor's alert: its catalogue notification queued and the audit log written,
in the caller's transaction. One small function per notification type builds its subject
and body (they move into the notification templates when the catalogue becomes data)."""

from __future__ import annotations

from sqlmodel import Session

from .. import audit, notifications

ACTOR = "robot:system-monitor"

USAGE_TYPES = {
    ("cpu", "high"): "CPU Usage - High",
    ("cpu", "critical"): "CPU Usage - Critical",
    ("cpu", "normal"): "CPU Usage - Back to normal",
    ("memory", "high"): "Memory Usage - High",
    ("memory", "critical"): "Memory Usage - Critical",
    ("memory", "normal"): "Memory Usage - Back to normal",
}
DISK_TYPES = {
    1: "Low disk space - Low criticality",
    2: "Low disk space - Medium criticality",
    3: "Low disk space - High criticality",
}
_WHAT = {"cpu": "CPU", "memory": "RAM"}


def usage_message(metric: str, level: str, percent: float, threshold: float,
                  window_s: float, host: str) -> tuple[str, str]:
    what = _WHAT[metric]
    minutes = f"{window_s / 60:g} minutes"
    return (f"{what} usage {level} on {host}: {percent:.1f} %",
            f"{what} is running over {threshold:g}% usage over {minutes} on {host}: "
            f"at least {percent:.1f} % in every sample of the last {minutes}.")


def usage_normal_message(metric: str, percent: float, threshold: float, host: str,
                         since: str) -> tuple[str, str]:
    what = _WHAT[metric]
    return (f"{what} usage back to normal on {host}: {percent:.1f} %",
            f"{what} usage is back under {threshold:g}% on {host} ({percent:.1f} %); the "
            f"episode began at {since}.")


def disk_message(mount: str, free_percent: float, threshold: float, host: str) -> tuple[str, str]:
    return (f"Low disk space on {host}:{mount}: {free_percent:.1f} % free",
            f"Storage is running under {threshold:g}% of free space: {mount} on {host} has "
            f"{free_percent:.1f} % free.")


def raise_alert(db: Session, type_name: str, subject: str, body: str, *, action: str,
                entity: str, entity_id: str, detail: dict, actor: str = ACTOR) -> None:
    """Queue the notification ``type_name`` and record ``action`` in the audit log."""
    notifications.queue(db, type_name, subject, body, context=detail)
    audit.record(db, actor, action, entity, entity_id, {**detail, "notification": type_name})
