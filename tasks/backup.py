"""Backup tasks: making a sealed backup, exporting the latest over SFTP, deleting old files
(``pamflow.backup`` wrapped for Prefect).

What they return and publish are file names, sizes, sha256 hashes, key ids and counts —
never a secret, never key material.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from tasks import ran_sync

if TYPE_CHECKING:  # imported where used: the flow module stays cheap to import
    from pamflow.backup import BackupResult
    from pamflow.backup.cleanup import CleanupReport
    from pamflow.backup.export import ExportResult


def _store():
    from pamflow.db import store

    return store()


@task(name="make-backup", task_run_name="make-{kind}-backup", cache_policy=NO_CACHE)
def make_backup(kind: str) -> BackupResult:
    """A ``kind`` backup of the store, sealed to the configured backup key(s).

    A failure is recorded ("Error on backup", audit) and raised, so the run fails with it.
    """
    from pamflow.backup import configured_recipients, create_backup
    from pamflow.backup.store import record_backup, record_backup_error
    from pamflow.errors import PamflowError
    from pamflow.vault import vault

    engine = _store()
    progress = ran_sync(create_progress_artifact(
        0.0, key=f"{kind}-backup-progress", description=f"{kind.capitalize()} backup: starting"),
        "create_progress_artifact")

    def step(done: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * done / max(total, 1),
                                 description=f"{kind.capitalize()} backup: {done} of {total} "
                                             "record(s) sealed")

    try:
        result = create_backup(engine, kind, vault(), configured_recipients(), on_progress=step)
    except PamflowError as exc:
        try:
            record_backup_error(engine, kind, str(exc))
        except Exception:  # noqa: BLE001 - the backup's own error is the one to raise
            logging.getLogger("pamflow.backup").exception("could not record the failed backup")
        raise
    record_backup(engine, result)
    return result


@task(name="delete-old-backups", cache_policy=NO_CACHE)
def delete_old_backups(retention_days: float, keep_last: int) -> CleanupReport:
    """Remove backups past retention and tmp/upload leftovers older than a day."""
    from pamflow.backup.cleanup import delete_backups, record_cleanup

    report = delete_backups(retention_days, keep_last)
    record_cleanup(_store(), report)
    return report


@task(name="export-latest-backup", task_run_name="export-latest-{kind}-backup",
      cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def export_latest_backup(kind: str, target_block: str) -> ExportResult | None:
    """Send the latest ``kind`` backup to the Backup target block ``target_block`` (None when
    there is no backup of that kind yet). A retry resumes a broken upload."""
    from blocks.backup_target import load_backup_target
    from pamflow.backup import KINDS, ExportError, latest
    from pamflow.backup.export import export_backup, record_export, vaulted_secret
    from pamflow.backup.store import record_backup_error
    from pamflow.errors import PamflowError
    from pamflow.vault import vault

    if kind not in KINDS:
        raise ExportError(f"unknown backup kind {kind[:40]!r} (credentials or secrets)")
    found = latest(kind)
    if found is None:
        return None
    block = load_backup_target(target_block)
    engine = _store()
    target = block.to_target(vaulted_secret(engine, block.credential_id, vault()))
    progress = ran_sync(create_progress_artifact(
        0.0, key=f"backup-export-{kind}-progress",
        description=f"Exporting {found.name} ({found.size} bytes)"), "create_progress_artifact")
    last = [0.0]

    def step(sent: int, size: int) -> None:
        done = 100.0 * sent / max(size, 1)
        if done - last[0] >= 10 or sent == size:
            last[0] = done
            update_progress_artifact(progress, done, description=f"{found.name}: {sent} of "
                                                                 f"{size} bytes sent")

    try:
        result = export_backup(found.name, target, on_progress=step)
    except PamflowError as exc:
        try:
            record_backup_error(engine, f"{kind} export", str(exc))
        except Exception:  # noqa: BLE001 - the export's own error is the one to raise
            logging.getLogger("pamflow.backup").exception("could not record the failed export")
        raise
    update_progress_artifact(progress, 100.0, description=f"{found.name}: on the remote "
                                                          f"directory, verified")
    record_export(engine, result, target)
    return result


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table artifact (no secrets: names, sizes, hashes, counts)."""
    ran_sync(create_table_artifact(rows or [{"result": "nothing to report"}], key=key,
                                   description=description), "create_table_artifact")


def publish_backup(result: BackupResult) -> None:
    publish_table(f"{result.kind}-backup", [result.as_row()],
                  f"{result.kind.capitalize()} backup {result.name}: {result.records} record(s), "
                  f"{result.size} bytes")


def publish_cleanup(report: CleanupReport) -> None:
    rows: list[dict[str, Any]] = [{"directory": r.directory, "file": r.name, "size": r.size,
                                   "reason": r.reason} for r in report.removed[:500]]
    rows += [{"directory": s.split("/", 1)[0], "file": s.split("/", 1)[-1], "size": None,
              "reason": "skipped"} for s in report.skipped[:100]]
    summary = report.as_dict()
    publish_table("backup-delete", rows,
                  f"Backup delete: {summary['removed']} file(s) removed ({summary['bytes']} "
                  f"bytes), {summary['kept']} kept, {len(report.skipped)} skipped")


def publish_export(results: list[ExportResult]) -> None:
    publish_table("backup-export", [r.as_row() for r in results],
                  f"Backup export: {len(results)} backup(s) on the remote directory, size and "
                  "sha256 verified there")
