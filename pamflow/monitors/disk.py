"""Disk space monitor: free space under 30 %, 20 % and 10 % per configured mount (003),
notified once per threshold crossing.

Each mount's level (0: fine, 1: under the low line, 2: medium, 3: high) is kept in the
store under ``disk:<mount>``. A run that finds a mount at a worse level than before queues
the notification of that level once (the most severe, when several lines were crossed at
once); a mount that recovers is recorded in the audit log and may be notified again when
it crosses a line anew. A mount that cannot be read is reported, not guessed.

"Space disk - Daily notification" (storage usage daily report) is queued by the first run
on or after ``disk_report_hour`` (UTC) each day, with every mount's free space.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from .. import audit
from . import state as monitor_state
from .alerts import ACTOR, DISK_TYPES, disk_message, raise_alert
from .settings import MonitorSettings

LEVEL_NAMES = {0: "ok", 1: "low", 2: "medium", 3: "high"}

DiskUsage = Callable[[str], tuple[int, int]]  # mount -> (total bytes, free bytes)


def statvfs_usage(mount: str) -> tuple[int, int]:
    """Total and free bytes of the filesystem at ``mount`` (free: what a user may still
    write, as ``df`` and ``psutil.disk_usage`` count it)."""
    import psutil

    usage = psutil.disk_usage(mount)
    return usage.total, usage.free


@dataclass(frozen=True)
class MountResult:
    mount: str
    free_percent: float | None
    level: int
    previous: int
    alert: str | None = None
    error: str | None = None


@dataclass
class DiskReport:
    host: str
    mounts: list[MountResult] = field(default_factory=list)
    daily: str | None = None  # the daily report's notification, when this run queued it

    @property
    def alerts(self) -> list[str]:
        return [m.alert for m in self.mounts if m.alert] + ([self.daily] if self.daily else [])


def level_of(free_percent: float, settings: MonitorSettings) -> int:
    if free_percent < settings.disk_high:
        return 3
    if free_percent < settings.disk_medium:
        return 2
    return 1 if free_percent < settings.disk_low else 0


def check_disks(engine: Engine, settings: MonitorSettings, usage: DiskUsage = statvfs_usage,
                host: str | None = None) -> DiskReport:
    host = host or socket.gethostname()
    report = DiskReport(host)
    thresholds = {1: settings.disk_low, 2: settings.disk_medium, 3: settings.disk_high}
    with Session(engine) as db:
        for mount in settings.disk_mounts:
            key = f"disk:{mount}"
            kept = monitor_state.load(db, key)
            previous = int(kept.get("level", 0))
            try:
                if not os.path.isdir(mount):
                    raise FileNotFoundError("not a directory")
                total, free = usage(mount)
                if total <= 0:
                    raise OSError("the filesystem reports no size")
            except OSError as exc:
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                report.mounts.append(MountResult(mount, None, previous, previous,
                                                 error=f"cannot read {mount}: {reason}"))
                continue
            free_percent = round(100.0 * free / total, 2)
            level = level_of(free_percent, settings)
            alert = None
            detail = {"host": host, "mount": mount, "free_percent": free_percent,
                      "free_bytes": free, "total_bytes": total, "level": LEVEL_NAMES[level]}
            if level > previous:
                alert = DISK_TYPES[level]
                subject, body = disk_message(mount, free_percent, thresholds[level], host)
                raise_alert(db, alert, subject, body, action="monitor.disk.low_space",
                            entity="mount", entity_id=mount, detail=detail)
            elif level < previous:
                audit.record(db, ACTOR, "monitor.disk.recovered", "mount", mount,
                             {**detail, "previous_level": LEVEL_NAMES[previous]})
            if level != previous or not kept:
                monitor_state.save(db, key, {"level": level, "free_percent": free_percent})
            report.mounts.append(MountResult(mount, free_percent, level, previous, alert))
        db.commit()
    return report


DAILY = "Space disk - Daily notification"


def daily_report(engine: Engine, report: DiskReport, settings: MonitorSettings,
                 now: datetime) -> bool:
    """Queue the storage usage daily report once a day (True when this run queued it)."""
    if settings.disk_report_hour is None or now.hour < settings.disk_report_hour \
            or not report.mounts:
        return False
    today = now.date().isoformat()
    with Session(engine) as db:
        if monitor_state.load(db, "disk-daily").get("date") == today:
            return False
        lines = [f"- {m.mount}: " + (m.error or f"{m.free_percent:.1f} % free "
                                     f"({LEVEL_NAMES[m.level]})") for m in report.mounts]
        worst = min((m.free_percent for m in report.mounts if m.free_percent is not None),
                    default=None)
        from .. import notifications

        notifications.queue(
            db, DAILY, f"Storage usage on {report.host}, {today}"
            + (f": lowest {worst:.1f} % free" if worst is not None else ""),
            f"Storage usage daily report for {report.host} ({today}):\n" + "\n".join(lines),
            context={"host": report.host, "date": today,
                     "mounts": [{"mount": m.mount, "free_percent": m.free_percent,
                                 "level": LEVEL_NAMES[m.level]} for m in report.mounts]})
        audit.record(db, ACTOR, "monitor.disk.daily_report", "host", report.host,
                     {"date": today, "mounts": len(report.mounts)})
        monitor_state.save(db, "disk-daily", {"date": today})
        db.commit()
    return True
