"""Backup monitor (seed 000): "Monitors if the database is configured and running and if
the backup files are updated".

The configured backup directory (``backup_dir``) is listed, never read: its newest
regular, non-empty file matching ``backup_pattern`` must be younger than
``backup_max_age_hours``. Symbolic links and subdirectories are not followed. The store
must answer a query. A problem ("no backup configured", "directory missing", "no backup
file", "newest backup is 30.0 h old", "database not answering") is notified once, with
"Backup not fresh", until it is solved (then recorded in the audit log) or changes kind.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from .. import audit
from ..models import utcnow
from . import state as monitor_state
from .alerts import ACTOR, raise_alert
from .settings import MonitorSettings

KEY = "backup"
NOTIFICATION = "Backup not fresh"
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class BackupReport:
    problem: str | None  # a short kind: unconfigured, missing_dir, no_file, stale, database
    detail: str
    newest: str | None = None
    age_hours: float | None = None
    alert: str | None = None


def newest_backup(directory: str, pattern: str) -> tuple[str, float] | None:
    """The newest regular, non-empty file of ``directory`` matching ``pattern`` (its name and
    modification time), without following links; at most ``MAX_ENTRIES`` entries looked at."""
    best: tuple[str, float] | None = None
    with os.scandir(directory) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_ENTRIES:
                break
            if not fnmatch.fnmatch(entry.name, pattern):
                continue
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
                continue
            if best is None or info.st_mtime > best[1]:
                best = (entry.name, info.st_mtime)
    return best


def look(engine: Engine, settings: MonitorSettings, now: datetime) -> BackupReport:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return BackupReport("database", f"the database is not answering: {type(exc).__name__}")
    if not settings.backup_dir:
        return BackupReport("unconfigured", "no backup is configured (backup_dir is not set)")
    directory = settings.backup_dir
    try:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            return BackupReport("missing_dir", f"{directory} is not a directory")
        found = newest_backup(directory, settings.backup_pattern)
    except OSError as exc:
        return BackupReport("missing_dir", f"cannot list {directory}: {exc.strerror or exc}")
    if found is None:
        return BackupReport("no_file", f"no backup file matching {settings.backup_pattern!r} "
                                       f"in {directory}")
    name, mtime = found
    age = round((now - datetime.fromtimestamp(mtime, UTC)).total_seconds() / 3600, 2)
    if age > settings.backup_max_age_hours:
        return BackupReport("stale", f"the newest backup {name} is {age:.1f} h old (more than "
                                     f"{settings.backup_max_age_hours:g} h)", name, age)
    return BackupReport(None, f"the newest backup {name} is {age:.1f} h old", name, age)


def check_backup(engine: Engine, settings: MonitorSettings, host: str | None = None,
                 now: datetime | None = None) -> BackupReport:
    host = host or socket.gethostname()
    report = look(engine, settings, now or utcnow())
    with Session(engine) as db:
        kept = monitor_state.load(db, KEY)
        previous = kept.get("problem")
        detail = {"host": host, "problem": report.problem, "detail": report.detail,
                  "newest": report.newest, "age_hours": report.age_hours}
        alert = None
        if report.problem and report.problem != previous:
            alert = NOTIFICATION
            raise_alert(db, NOTIFICATION, f"Backup not fresh on {host}: {report.problem}",
                        f"Backup monitor: {report.detail}.", action="monitor.backup.problem",
                        entity="backup", entity_id=host, detail=detail)
        elif previous and not report.problem:
            audit.record(db, ACTOR, "monitor.backup.recovered", "backup", host,
                         {**detail, "previous_problem": previous})
        if report.problem != previous or not kept:
            monitor_state.save(db, KEY, {"problem": report.problem, "detail": report.detail})
        db.commit()
    return BackupReport(report.problem, report.detail, report.newest, report.age_hours, alert)
