"""Where backups live: the backup directory, its temp and upload directories, file names.

``PAMFLOW_BACKUP_DIR`` (default ``<data dir>/backups``, created 0700) holds the backup files;
``tmp/`` under it holds backups being written (linked into place when complete) and
``upload/`` the snapshot of a backup being exported (the seed's "aioc backup tempdir" and
"aioc backup uploaddir": leftovers of failed runs are removed by *backup delete*).

Backup file names are ``pamflow-<kind>-<YYYYMMDDTHHMMSSZ>-<6 hex>.pfbk``; any other name
(a path, ``..``, a symlink, another extension) is refused. Files are created with mode 0600
and ``O_EXCL | O_NOFOLLOW``; they are read only from the backup directory, never through a
symlink.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..config import data_dir
from .errors import BackupRefused

KINDS = ("credentials", "secrets")
SUFFIX = ".pfbk"
NAME_RE = re.compile(r"^pamflow-(credentials|secrets)-(\d{8}T\d{6}Z)-([0-9a-f]{6})\.pfbk$")
TMP_DIR = "tmp"
UPLOAD_DIR = "upload"
DEFAULT_MAX_BYTES = 8 * 1024**3


def backup_dir() -> Path:
    """``PAMFLOW_BACKUP_DIR`` or ``<data dir>/backups`` (created with mode 0700)."""
    path = Path(os.environ.get("PAMFLOW_BACKUP_DIR") or data_dir() / "backups").expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path.resolve()


def sub_dir(name: str) -> Path:
    """``tmp`` or ``upload`` under the backup directory (0700); refused if it is a symlink."""
    path = backup_dir() / name
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise BackupRefused(f"{path} is not a directory (a symlink or a file): refusing to use it")
    return path


def max_bytes() -> int:
    """The largest backup file read (``PAMFLOW_BACKUP_MAX_BYTES``, default 8 GiB)."""
    try:
        return int(os.environ.get("PAMFLOW_BACKUP_MAX_BYTES") or DEFAULT_MAX_BYTES)
    except ValueError:
        return DEFAULT_MAX_BYTES


def new_name(kind: str, now: datetime | None = None) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown backup kind {kind!r}")
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"pamflow-{kind}-{when}-{secrets.token_hex(3)}{SUFFIX}"


def parse_name(name: str) -> tuple[str, datetime]:
    """``(kind, created_at)`` of a valid backup file name; BackupRefused otherwise."""
    m = NAME_RE.match(name) if isinstance(name, str) and len(name) < 128 else None
    if not m:
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        raise BackupRefused(f"{shown} is not a backup file name (pamflow-<credentials|secrets>-"
                            "<YYYYMMDDTHHMMSSZ>-<6 hex>.pfbk, in the backup directory)")
    return m.group(1), datetime.strptime(m.group(2), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def resolve(ref: str) -> Path:
    """The backup file ``ref`` names: a bare file name, or a path whose directory is the
    backup directory. Anything else (another directory, ``..``, a symlink) is refused."""
    if not isinstance(ref, str) or not ref or "\0" in ref or len(ref) > 4096:
        raise BackupRefused("no valid backup file given")
    base = backup_dir()
    given = Path(ref)
    if given.name != ref:  # a path: its directory must be the backup directory itself
        try:
            parent = given.parent.expanduser().resolve(strict=True)
        except OSError:
            raise BackupRefused(f"{ref[:200]!r} is not in the backup directory {base}") from None
        if parent != base or given.name in ("", ".", ".."):
            raise BackupRefused(f"{ref[:200]!r} is not in the backup directory {base}: backups "
                                "are read only from there")
    parse_name(given.name)
    path = base / given.name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BackupRefused(f"no backup {given.name} in {base}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise BackupRefused(f"{given.name} is not a regular file (a symlink or other): refused")
    return path


def open_backup(path: Path) -> tuple[int, int]:
    """``(fd, size)`` of a backup file opened without following symlinks; too large refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BackupRefused(f"cannot open {path.name}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BackupRefused(f"{path.name} is not a regular file")
    if st.st_size > max_bytes():
        os.close(fd)
        raise BackupRefused(f"{path.name} is {st.st_size} bytes, over the limit of {max_bytes()} "
                            "(PAMFLOW_BACKUP_MAX_BYTES)")
    return fd, st.st_size


@dataclass(frozen=True)
class BackupFile:
    """A backup file in the backup directory."""

    name: str
    kind: str
    created_at: datetime
    size: int
    path: Path
    modified_ns: int = 0  # orders two backups named within the same second


def list_backups(kind: str | None = None) -> list[BackupFile]:
    """The backup files, oldest first (by the time in their name); others are ignored."""
    base = backup_dir()
    out: list[BackupFile] = []
    with os.scandir(base) as entries:
        for entry in entries:
            m = NAME_RE.match(entry.name)
            if not m or not entry.is_file(follow_symlinks=False):
                continue
            k, when = parse_name(entry.name)
            if kind and k != kind:
                continue
            st = entry.stat(follow_symlinks=False)
            out.append(BackupFile(entry.name, k, when, st.st_size, base / entry.name,
                                  st.st_mtime_ns))
    out.sort(key=lambda b: (b.created_at, b.modified_ns, b.name))
    return out


def latest(kind: str) -> BackupFile | None:
    found = list_backups(kind)
    return found[-1] if found else None


__all__ = ["KINDS", "NAME_RE", "BackupFile", "backup_dir", "latest", "list_backups", "max_bytes",
           "new_name", "open_backup", "parse_name", "resolve", "sub_dir"]
