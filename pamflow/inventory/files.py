"""Where import files come from: the upload directory (confined, no symlink escapes) and
where rejected rows go (the data directory)."""


from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from ..models import utcnow
from .model import (
    MAX_FILE_BYTES,
    ImportFileError,
)

# ---------------------------------------------------------------------------------------
# where files come from and where error files go


def _env_limit(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ImportFileError(f"{name}={value[:40]!r} is not a positive whole number")
    return int(value)


def upload_dir() -> Path:
    """The directory imports read from: ``PAMFLOW_UPLOAD_DIR`` or ``<data dir>/uploads``
    (created with mode 0700 when missing), symlinks resolved."""
    from ..config import data_dir

    configured = os.environ.get("PAMFLOW_UPLOAD_DIR")
    path = Path(configured).expanduser() if configured else data_dir() / "uploads"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(os.path.realpath(path))


def errors_dir() -> Path:
    """``<data dir>/import-errors`` (mode 0700), where error files are written."""
    from ..config import data_dir

    path = data_dir() / "import-errors"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _shown_path(path: str) -> str:
    return repr(path if len(path) <= 200 else path[:197] + "...")


def open_upload(path: str | Path, base: Path | None = None) -> tuple[Path, int]:
    """Open a file of the upload directory for reading: ``(its real path, a file descriptor)``.

    ``path`` is relative to ``base`` (default :func:`upload_dir`) or absolute inside it.
    Every refusal (missing, outside, a symlink leading out, not a regular file, a file with
    other hard links, a NUL byte) raises the same :class:`ImportFileError`, so the answer
    says nothing about files outside the directory.
    """
    base = Path(os.path.realpath(base if base is not None else upload_dir()))
    text = os.fspath(path)
    refused = ImportFileError(f"{_shown_path(text)}: no such file in the upload directory {base}")
    if not text or "\x00" in text:
        raise refused
    candidate = text if os.path.isabs(text) else os.path.join(base, text)
    try:
        relative = Path(os.path.realpath(candidate)).relative_to(base)
    except (ValueError, OSError):
        raise refused from None
    if not relative.parts:
        raise refused
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        folder = os.open(base, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError:
        raise refused from None
    try:  # each component without following symlinks: a link swapped in meanwhile is refused
        for part in relative.parts[:-1]:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(relative.parts[-1], flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=folder)
    except OSError:
        raise refused from None
    finally:
        os.close(folder)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise refused
    os.set_blocking(fd, True)
    return base / relative, fd


def copy_to_uploads(source: str | Path, base: Path | None = None) -> Path:
    """Copy ``source`` (opened with the caller's own rights) into the upload directory under
    a new name (``<UTC timestamp>-<random>-<name>``, mode 0600); returns the copy's path."""
    base = base if base is not None else upload_dir()
    source = Path(source)
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ImportFileError(f"{source}: cannot be read ({exc.strerror})") from None
    with src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImportFileError(f"{source}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ImportFileError(f"{source.name}: {st.st_size:,} bytes, over the "
                                  f"{MAX_FILE_BYTES:,}-byte limit")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)[-120:].lstrip(".") or "upload"
        target = base / f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}-{name}"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as out:
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > MAX_FILE_BYTES:
                    out.close()
                    target.unlink(missing_ok=True)
                    raise ImportFileError(f"{source.name}: over the {MAX_FILE_BYTES:,}-byte limit")
                out.write(chunk)
    return target
