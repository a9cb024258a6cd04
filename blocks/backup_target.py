"""The Backup export target as a Prefect block, edited in the UI (Blocks > Backup target).

Only where backups go lives here — host, port, user, remote directory and the server's
pinned host key — never the password or private key: ``credential_id`` names a credential
in pamflow's vault (its secret is the SSH password, or an OpenSSH/PEM private key), which the
export decrypts on the worker. Anyone who can call Prefect's API can read and edit a block,
so nothing here opens the backups or the server.
"""

from __future__ import annotations

from collections.abc import Coroutine

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.backup.export import SftpTarget


class BackupTargetBlock(Block):
    """An SFTP directory backups are exported to; its host key is pinned (any other key is
    refused) and its secret is a credential in pamflow's vault (by id)."""

    _block_type_name = "Backup target"
    _block_type_slug = "pamflow-backup-target"
    _description = ("pamflow: the SFTP server and directory the Backup export robot sends the "
                    "latest backups to (host key pinned, secret in pamflow's vault).")

    host: str = Field(description="Host name or address of the SFTP server.")
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(description="The account backups are uploaded as.")
    remote_dir: str = Field(description="Absolute remote directory (must exist).")
    host_key: str = Field(description="The server's host key, pinned: an OpenSSH public key line "
                                      "(ssh-ed25519 AAAA...), e.g. from ssh-keyscan checked out "
                                      "of band. Any other key is refused.")
    credential_id: int = Field(ge=1, description="The pamflow credential whose vaulted secret is "
                                                 "this account's password or private key.")
    timeout: float = Field(default=30.0, gt=0, le=600)

    def to_target(self, secret: str) -> SftpTarget:
        return SftpTarget(host=self.host, port=self.port, username=self.username,
                          remote_dir=self.remote_dir, host_key=self.host_key, secret=secret,
                          timeout=self.timeout)


def load_backup_target(name: str) -> BackupTargetBlock:
    """The Backup target block saved as ``name``; ExportError naming it when there is none."""
    from pamflow.backup.errors import ExportError

    try:
        loaded = BackupTargetBlock.load(name, validate=True)
    except ValueError as exc:
        raise ExportError(f"no Backup target block named {name!r} ({str(exc)[:200]}): create one "
                          "in the Prefect UI (Blocks > Backup target)") from None
    if isinstance(loaded, Coroutine):
        loaded.close()
        raise RuntimeError(f"backup target block {name} cannot be loaded inside an event loop")
    return loaded
