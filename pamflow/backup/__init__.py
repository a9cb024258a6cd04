"""Backups you can restore: Credentials backup, Secrets backup, Backup export, backup delete.

- :mod:`.keys` — the backup key (X25519 recipients, XOR 2-of-2 custodian shares)
- :mod:`.sealed` — the sealed, streamed file format and its manifest
- :mod:`.files` — the backup directory, its tmp/ and upload/ directories, file names
- :mod:`.store` — making a backup of the store and restoring one into an empty store
- :mod:`.export` — sending the latest backup over SFTP (host key pinned, resumable, verified)
- :mod:`.cleanup` — backup delete: past retention, and tmp/upload leftovers
"""

from __future__ import annotations

from .errors import (
    BackupError,
    BackupKeyError,
    BackupRefused,
    ExportError,
    HostKeyRefused,
    RestoreRefused,
)
from .files import KINDS, BackupFile, backup_dir, latest, list_backups
from .keys import BackupKey, Recipient, configured_recipients, load_key
from .store import BackupResult, RestoreResult, create_backup, restore_backup, verify_backup

__all__ = ["KINDS", "BackupError", "BackupFile", "BackupKey", "BackupKeyError", "BackupRefused",
           "BackupResult", "ExportError", "HostKeyRefused", "Recipient", "RestoreRefused",
           "RestoreResult", "backup_dir", "configured_recipients", "create_backup", "latest",
           "list_backups", "load_key", "restore_backup", "verify_backup"]
