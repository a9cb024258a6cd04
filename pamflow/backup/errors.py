"""The backup family's errors. Messages name the file, key id, host or step — never a secret."""

from __future__ import annotations

from ..errors import PamflowError


class BackupError(PamflowError):
    """A backup could not be made, read, restored, exported or cleaned up."""


class BackupKeyError(BackupError):
    """A backup key, public key or custodian share is missing, malformed or does not fit."""


class BackupRefused(BackupError):
    """A backup file was refused (wrong key, truncated, altered, unknown version, bad name);
    nothing was written."""


class RestoreRefused(BackupError):
    """A restore was refused before or while writing (the target store is not empty, a row
    does not fit); the transaction was rolled back, nothing was written."""


class ExportError(BackupError):
    """A backup could not be sent to, or verified on, the remote directory."""


class HostKeyRefused(ExportError):
    """The remote server offered a host key other than the pinned one; nothing was sent."""
