"""Archive files: gzip-compressed JSON lines, one ``{"table": …, "row": {…}}`` per row,
written to a temporary name, flushed to disk and renamed into place, with the SHA-256 of
the compressed bytes recorded beside them in the store (``archive_batch``)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from .settings import RetentionError

SUFFIX = ".jsonl.gz"
TMP_SUFFIX = ".tmp"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def slug(name: str | None) -> str:
    """A directory name for a tenant or dataset: itself when plainly safe, else a hash
    (a tenant name never escapes the archive directory)."""
    if name is None:
        return "_all"
    if _SAFE.fullmatch(name) and ".." not in name:
        return name
    return "t-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


@dataclass(frozen=True)
class Written:
    path: str  # relative to the archive directory
    sha256: str
    size: int


def ensure_dir(root: Path) -> Path:
    root = Path(root)
    if not root.is_absolute():
        raise RetentionError(f"the archive directory must be absolute: {str(root)[:200]!r}")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not root.is_dir():
        raise RetentionError(f"the archive directory {root} is not a directory")
    return root


def write(root: Path, dataset: str, tenant: str | None, control: datetime,
          first_id: int, last_id: int, rows: Iterable[tuple[str, dict | str]]) -> Written:
    """Write ``rows`` (``(table, row)``: a dict, or a row already encoded as a JSON object)
    as one archive file; durable when it returns."""
    root = ensure_dir(root)
    rel = Path(slug(dataset)) / slug(tenant) / control.strftime("%Y-%m-%d") / (
        f"{slug(dataset)}-{first_id}-{last_id}-{uuid.uuid4().hex[:8]}{SUFFIX}")
    final = root / rel
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            for table, row in rows:
                text = row if isinstance(row, str) else json.dumps(row, default=_json,
                                                                   ensure_ascii=False)
                gz.write(f'{{"table": {json.dumps(table)}, "row": {text}}}\n'.encode())
        raw.flush()
        os.fsync(raw.fileno())
    digest, size = checksum(tmp)
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Written(rel.as_posix(), digest, size)


def checksum(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def resolve(root: Path, rel: str) -> Path:
    """The file of a recorded relative path, refusing one that leaves the archive."""
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if base != path and base not in path.parents:
        raise RetentionError(f"archive path {rel[:200]!r} leaves the archive directory")
    return path


def read(path: Path) -> Iterator[tuple[str, dict]]:
    """``(table, row)`` of every line of an archive file."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            yield item["table"], item["row"]


def files(root: Path) -> Iterator[Path]:
    """Every archive file and left-over temporary file under ``root``."""
    if not Path(root).is_dir():
        return
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith(SUFFIX) or name.endswith(SUFFIX + TMP_SUFFIX):
                yield Path(dirpath) / name
