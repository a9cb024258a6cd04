"""The backup jobs: Credentials backup, Secrets backup, Backup Export and backup delete.

Backups are sealed to the backup key (``pamflow backup keygen``), not to the vault's master
key; the host that makes them cannot read them. The rules are in ``pamflow.backup``.
"""

from __future__ import annotations

from prefect import flow

from tasks.backup import (
    delete_old_backups,
    export_latest_backup,
    make_backup,
    publish_backup,
    publish_cleanup,
    publish_export,
)


@flow(name="credentials-backup")
def credentials_backup() -> dict:
    """Credentials backup: run backup tasks for credentials.

    Devices, pinned host keys, credentials and their history of secrets, sealed to the
    backup key into the backup directory.
    """
    result = make_backup("credentials")
    publish_backup(result)
    return result.as_row()


@flow(name="secrets-backup")
def secrets_backup() -> dict:
    """Secrets backup: run backup tasks for protected information.

    Every other secret the vault seals (the webhook sources' secrets), sealed to the backup
    key into the backup directory.
    """
    result = make_backup("secrets")
    publish_backup(result)
    return result.as_row()


@flow(name="backup-export")
def backup_export(target_block: str = "backup-target",
                  kinds: list[str] | None = None) -> list[dict]:
    """Backup Export: exports the last backup to configured remote directory.

    The latest backup of each kind goes over SFTP to the Backup target block
    ``target_block`` (host key pinned, resumable, size and sha256 verified remotely).
    """
    results = []
    for kind in kinds or ["credentials", "secrets"]:
        exported = export_latest_backup(kind, target_block)
        if exported is not None:
            results.append(exported)
    publish_export(results)
    return [r.as_row() for r in results]


@flow(name="backup-delete")
def backup_delete(retention_days: float = 30, keep_last: int = 7) -> dict:
    """Backup delete: deletes backup files older than one day from the temp and upload
    folders (failed uploads), and backups past ``retention_days`` (keeping the newest
    ``keep_last`` of each kind).
    """
    report = delete_old_backups(retention_days, keep_last)
    publish_cleanup(report)
    return report.as_dict()
