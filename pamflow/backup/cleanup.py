"""Backup delete: backups past retention, and tmp/upload leftovers older than a day.

The seed's *backupdeletejob* "deletes db backup files older than one day from folders that
are configured with the following system parameters · aioc backup uploaddir · aioc backup
tempdir; these files are stored temporarily to upload to the ftp server; this is a cleaning
job for failed uploads". Here those folders are ``tmp/`` and ``upload/`` under the backup
directory; besides them, backup files older than the retention are removed, always keeping
the newest ``keep_last`` of each kind.

Every directory is opened once (``O_DIRECTORY | O_NOFOLLOW``) and its entries are examined
and removed relative to that descriptor without following symlinks: a symlink, a
sub-directory or anything that is not a regular file is skipped and reported, never
followed out of the configured directories.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from . import files
from .errors import BackupError

LEFTOVER_AGE = timedelta(days=1)


@dataclass
class Removed:
    directory: str  # backups | tmp | upload
    name: str
    size: int
    reason: str


@dataclass
class CleanupReport:
    removed: list[Removed] = field(default_factory=list)
    kept: int = 0
    skipped: list[str] = field(default_factory=list)  # "tmp/link: symlink, not followed"

    def as_dict(self) -> dict:
        return {"removed": len(self.removed), "bytes": sum(r.size for r in self.removed),
                "kept": self.kept, "skipped": list(self.skipped)}


def _open_dir(path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BackupError(f"cannot open {path}: {exc.strerror} (a symlink is refused)") from None


def _regular(dfd: int, name: str, label: str, report: CleanupReport) -> os.stat_result | None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        what = "symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        report.skipped.append(f"{label}/{name[:100]}: {what}, not followed")
        return None
    return st


def delete_backups(retention_days: float = 30, keep_last: int = 7,
                   leftover_age: timedelta = LEFTOVER_AGE, now: datetime | None = None,
                   dry_run: bool = False) -> CleanupReport:
    """Remove backups older than ``retention_days`` (keeping the newest ``keep_last`` per
    kind) and tmp/upload files older than ``leftover_age``."""
    if retention_days < 1 or keep_last < 1:
        raise BackupError("retention_days and keep_last must be at least 1: backup delete never "
                          "removes every backup")
    now = now or datetime.now(UTC)
    report = CleanupReport()
    base = files.backup_dir()
    dfd = _open_dir(base)
    try:
        by_kind: dict[str, list[tuple[datetime, str]]] = {}
        for name in os.listdir(dfd):
            if not files.NAME_RE.match(name):
                continue
            if _regular(dfd, name, "backups", report) is None:
                continue
            kind, created = files.parse_name(name)
            by_kind.setdefault(kind, []).append((created, name))
        cutoff = now - timedelta(days=retention_days)
        for entries in by_kind.values():
            entries.sort()
            for created, name in entries[:-keep_last]:
                if created >= cutoff:
                    report.kept += 1
                    continue
                st = _regular(dfd, name, "backups", report)
                if st is None:
                    continue
                if not dry_run:
                    os.unlink(name, dir_fd=dfd)
                report.removed.append(Removed("backups", name, st.st_size,
                                              f"older than {retention_days:g} day(s)"))
            report.kept += min(len(entries), keep_last)
    finally:
        os.close(dfd)
    limit = time.time() - leftover_age.total_seconds()
    for label in (files.TMP_DIR, files.UPLOAD_DIR):
        sub = files.sub_dir(label)
        sfd = _open_dir(sub)
        try:
            for name in os.listdir(sfd):
                st = _regular(sfd, name, label, report)
                if st is None:
                    continue
                if st.st_mtime > limit:
                    report.kept += 1
                    continue
                if not dry_run:
                    os.unlink(name, dir_fd=sfd)
                report.removed.append(Removed(label, name[:200], st.st_size,
                                              "leftover older than a day"))
        finally:
            os.close(sfd)
    return report




def record_cleanup(engine, report: CleanupReport, actor: str = "robot:backup") -> None:
    """One audit row naming what backup delete removed (nothing when it removed nothing)."""
    if not report.removed:
        return
    from sqlmodel import Session

    from .. import audit

    with Session(engine) as db:
        audit.record(db, actor, "backup.deleted", "backup_dir", None,
                     {"removed": [f"{r.directory}/{r.name}" for r in report.removed[:200]],
                      "count": len(report.removed),
                      "bytes": sum(r.size for r in report.removed)})
        db.commit()


__all__ = ["CleanupReport", "Removed", "delete_backups", "record_cleanup"]
