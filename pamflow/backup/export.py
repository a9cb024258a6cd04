"""Backup Export: the latest backup sent to a remote directory over SFTP.

- **Host key pinned**: the target names the server's host key (an OpenSSH public key line);
  the connection offers only that key type and any other key — changed, or a target
  without a pinned key — is refused before any credential or byte of the backup is sent.
- **Snapshot**: the backup is hard-linked into ``upload/`` for the upload, so backup delete
  cannot remove it meanwhile; the link is removed once the remote copy is verified (a
  failed upload leaves it for backup delete to clean after a day).
- **Resumable**: the file is written as ``<name>.part`` in the remote directory. A later run
  finding a ``.part`` no longer than the backup checks that it holds the backup's first
  bytes (sha256 of that prefix on both sides) and continues from there; otherwise it starts
  over.
- **Verified on the remote side**: size by ``stat`` and sha256 computed remotely
  (``sha256sum`` over SSH; by re-reading the file over SFTP when the account has no shell),
  then the ``.part`` is renamed to the backup's name.

The SSH password or private key is never a setting: it is a credential in pamflow's vault,
which the caller decrypts and passes in (``secret``); it is never logged nor put into an
error.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import posixpath
import shlex
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from ..hostkeys import HostKeyError, parse_host_key
from . import files
from .errors import ExportError, HostKeyRefused

log = logging.getLogger(__name__)
paramiko_log = "pamflow.backup.paramiko"
logging.getLogger(paramiko_log).setLevel(logging.WARNING)

CHUNK = 256 * 1024
_REMOTE_DIR_MAX = 1024


@dataclass(frozen=True)
class SftpTarget:
    """Where backups go. ``secret`` (password, or an OpenSSH/PEM private key) is not shown."""

    host: str
    port: int
    username: str
    remote_dir: str
    host_key: str  # the pinned host key: an OpenSSH public key line
    secret: str = field(repr=False)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        check_remote_dir(self.remote_dir)
        if not self.host or any(c in self.host for c in "\0\r\n /"):
            raise ExportError("the backup target needs a host name or address")
        if not 0 < int(self.port) < 65536:
            raise ExportError(f"{self.port} is not a port number")
        if not self.username or any(c in self.username for c in "\0\r\n"):
            raise ExportError("the backup target needs a user name")

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


def check_remote_dir(path: str) -> str:
    """An absolute remote directory without ``..``, NUL or line breaks."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > _REMOTE_DIR_MAX \
            or any(c in path for c in "\0\r\n") or ".." in path.split("/"):
        shown = repr(path[:80]) if isinstance(path, str) else type(path).__name__
        raise ExportError(f"remote directory {shown} must be an absolute path without '..'")
    return posixpath.normpath(path)


@dataclass
class ExportResult:
    """A backup on the remote directory, verified (never a secret)."""

    name: str
    size: int
    sha256: str
    remote_path: str
    resumed_from: int
    sent: int
    verified_by: str  # sha256sum | sftp re-read
    already_there: bool = False

    def as_row(self) -> dict[str, Any]:
        return {"file": self.name, "size": self.size, "sha256": self.sha256,
                "remote path": self.remote_path, "resumed from": self.resumed_from,
                "bytes sent": self.sent, "verified by": self.verified_by,
                "already there": self.already_there}


def _sha256_file(path: Path, limit: int | None = None) -> str:
    sha, left = hashlib.sha256(), limit
    with path.open("rb") as fh:
        while left is None or left > 0:
            data = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not data:
                break
            sha.update(data)
            if left is not None:
                left -= len(data)
    return sha.hexdigest()


def _load_private_key(secret: str) -> paramiko.PKey | None:
    if not secret.lstrip().startswith("-----BEGIN"):
        return None
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(secret))
        except (paramiko.SSHException, ValueError):
            continue
    raise ExportError("the backup target's vaulted private key cannot be read (unsupported or "
                      "encrypted key)")


class _Session:
    """An authenticated SSH connection with a checked host key, and its SFTP client."""

    def __init__(self, target: SftpTarget) -> None:
        try:
            pinned = parse_host_key(target.host_key)
        except HostKeyError as exc:
            raise HostKeyRefused(f"backup target {target.host}:{target.port} has no usable "
                                 f"pinned host key ({exc}); nothing was sent") from None
        addr = f"{target.host}:{target.port}"
        try:
            sock = socket.create_connection((target.host, target.port), timeout=target.timeout)
        except OSError as exc:
            raise ExportError(f"cannot connect to {addr}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        self.transport = paramiko.Transport(sock)
        self.sftp: paramiko.SFTPClient | None = None
        try:
            self.transport.set_log_channel(paramiko_log)
            self.transport.banner_timeout = self.transport.handshake_timeout = target.timeout
            self.transport.auth_timeout = target.timeout
            opts = self.transport.get_security_options()
            wanted = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}.get(
                pinned.key_type, [pinned.key_type])
            opts.key_types = [k for k in wanted if k in opts.key_types] or wanted[:1]
            try:
                self.transport.start_client(timeout=target.timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                text = str(exc) or type(exc).__name__
                if "host key" in text.lower() or "incompatible" in text.lower():
                    raise HostKeyRefused(f"{addr} does not offer the pinned {pinned.key_type} host "
                                         f"key {pinned.fingerprint}; nothing was sent") from None
                raise ExportError(f"SSH negotiation with {addr} failed: {text}") from None
            offered = self.transport.get_remote_server_key()
            if offered.get_name() != pinned.key_type or offered.get_base64() != pinned.key_base64:
                fp = "SHA256:" + base64.b64encode(
                    hashlib.sha256(offered.asbytes()).digest()).decode().rstrip("=")
                raise HostKeyRefused(
                    f"host key of {addr} is {offered.get_name()} {fp}, not the pinned "
                    f"{pinned.key_type} {pinned.fingerprint}: refused, nothing was sent (pin the "
                    "new key in the backup target only if the change is expected)")
            pkey = _load_private_key(target.secret)
            try:
                if pkey is not None:
                    self.transport.auth_publickey(target.username, pkey)
                else:
                    self.transport.auth_password(target.username, target.secret)
            except paramiko.AuthenticationException:
                raise ExportError(f"{target.where} refused the vaulted "
                                  f"{'key' if pkey else 'password'}") from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ExportError(f"authentication on {addr} failed: "
                                  f"{str(exc) or type(exc).__name__}") from None
            self.sftp = paramiko.SFTPClient.from_transport(self.transport)
            if self.sftp is None:
                raise ExportError(f"{addr} refused the SFTP subsystem")
            self.sftp.get_channel().settimeout(target.timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the SFTP client and the connection (a dead connection closes quietly)."""
        try:
            if self.sftp is not None:
                self.sftp.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self.transport.close()

    def remote_sha256(self, path: str, size: int) -> tuple[str, str]:
        """``(sha256, how)`` of the remote file, computed on the remote side."""
        try:
            chan = self.transport.open_session(timeout=30)
            chan.settimeout(300)
            chan.exec_command(f"sha256sum -- {shlex.quote(path)}")
            out = b""
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                out += data[: 4096 - len(out)]
            code = chan.recv_exit_status()
            chan.close()
            digest = out.split(b" ", 1)[0].decode("ascii", "replace")
            if code == 0 and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                return digest, "sha256sum"
        except (paramiko.SSHException, OSError, EOFError):
            pass
        assert self.sftp is not None
        sha = hashlib.sha256()
        with self.sftp.open(path, "rb") as fh:
            fh.prefetch(size)
            while True:
                data = fh.read(1 << 20)
                if not data:
                    break
                sha.update(data)
        return sha.hexdigest(), "sftp re-read"


def _stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return sftp.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if getattr(exc, "errno", None) == 2:
            return None
        raise


def _snapshot(path: Path) -> Path:
    """A hard link to ``path`` in the upload directory (kept until the upload is verified)."""
    upload = files.sub_dir(files.UPLOAD_DIR)
    link = upload / path.name
    try:
        st = os.lstat(link)
        if stat.S_ISREG(st.st_mode) and os.path.samestat(st, os.stat(path)):
            return link
        link.unlink()
    except FileNotFoundError:
        pass
    os.link(path, link, follow_symlinks=False)
    return link


def export_backup(ref: str, target: SftpTarget, *, chunk: int = CHUNK,
                  on_progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Send the backup ``ref`` (a name in the backup directory) to ``target`` (module doc).

    ``on_progress(sent_bytes, size)`` is called after each chunk written.
    """
    source = files.resolve(ref)
    snap = _snapshot(source)
    size = snap.stat().st_size
    digest = _sha256_file(snap)
    remote_dir = check_remote_dir(target.remote_dir)
    final = posixpath.join(remote_dir, source.name)
    part = final + ".part"
    session = _Session(target)
    try:
        sftp = session.sftp
        assert sftp is not None
        try:
            dir_attrs = sftp.stat(remote_dir)
        except OSError:
            raise ExportError(f"remote directory {remote_dir} does not exist on "
                              f"{target.host}:{target.port}") from None
        if not stat.S_ISDIR(dir_attrs.st_mode or 0):
            raise ExportError(f"{remote_dir} on {target.host}:{target.port} is not a directory")
        there = _stat(sftp, final)
        if there is not None and there.st_size == size and stat.S_ISREG(there.st_mode or 0):
            remote, how = session.remote_sha256(final, size)
            if remote == digest:
                snap.unlink(missing_ok=True)
                return ExportResult(source.name, size, digest, final, size, 0, how, True)
        offset = 0
        partial = _stat(sftp, part)
        if partial is not None and stat.S_ISREG(partial.st_mode or 0) \
                and 0 < (partial.st_size or 0) <= size:
            remote, _how = session.remote_sha256(part, partial.st_size or 0)
            if remote == _sha256_file(snap, partial.st_size):
                offset = partial.st_size or 0
            else:
                log.warning("backup export: %s on %s does not hold the start of %s; starting "
                            "over", part, target.host, source.name)
        sent = 0
        try:
            with snap.open("rb") as src, sftp.open(part, "r+b" if offset else "wb") as dst:
                dst.set_pipelined(True)
                if offset:
                    dst.seek(offset)
                src.seek(offset)
                while True:
                    data = src.read(chunk)
                    if not data:
                        break
                    dst.write(data)
                    sent += len(data)
                    if on_progress is not None:
                        on_progress(offset + sent, size)
                sftp.chmod(part, 0o600)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ExportError(f"upload of {source.name} to {target.host}:{target.port} broke "
                              f"after {offset + sent} of {size} bytes "
                              f"({str(exc) or type(exc).__name__}); the next run resumes") from None
        got = _stat(sftp, part)
        if got is None or got.st_size != size:
            raise ExportError(f"{part} on {target.host} is {got.st_size if got else 'missing'} "
                              f"bytes, not {size}: not verified; the next run resumes or restarts")
        remote, how = session.remote_sha256(part, size)
        if remote != digest:
            raise ExportError(f"{part} on {target.host} has sha256 {remote}, not {digest}: the "
                              "remote copy is wrong; the next run starts it over")
        sftp.posix_rename(part, final)
        done = _stat(sftp, final)
        if done is None or done.st_size != size:
            raise ExportError(f"{final} on {target.host} is not in place after the rename")
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise ExportError(f"export of {source.name} to {target.host}:{target.port} failed: "
                          f"{str(exc) or type(exc).__name__}") from None
    finally:
        session.close()
    snap.unlink(missing_ok=True)
    return ExportResult(source.name, size, digest, final, offset, sent, how)


def vaulted_secret(engine, credential_id: int, box) -> str:
    """The secret of pamflow credential ``credential_id`` (the backup target's password or
    private key), decrypted with the vault, bound to its row."""
    from sqlmodel import Session

    from ..models import Credential
    from ..vault import credential_aad

    with Session(engine) as db:
        cred = db.get(Credential, credential_id)
    if cred is None or not cred.secret:
        raise ExportError(f"the backup target's credential id {credential_id} does not exist or "
                          "has no secret")
    return box.decrypt(cred.secret, credential_aad(cred.id, cred.device_id, "secret"))


def record_export(engine, result: ExportResult, target: SftpTarget,
                  actor: str = "robot:backup") -> None:
    """The audit row of a backup exported."""
    from sqlmodel import Session

    from .. import audit

    with Session(engine) as db:
        audit.record(db, actor, "backup.exported", "backup_file", result.name,
                     {"target": f"{target.where}", "remote_path": result.remote_path,
                      "size": result.size, "sha256": result.sha256,
                      "resumed_from": result.resumed_from, "verified_by": result.verified_by})
        db.commit()


__all__ = ["ExportResult", "SftpTarget", "check_remote_dir", "export_backup", "record_export",
           "vaulted_secret"]
