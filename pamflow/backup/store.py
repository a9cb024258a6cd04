"""Credentials backup and Secrets backup: the store's secrets exported, sealed, and restored.

Kinds
-----
- ``credentials``: devices, their pinned SSH host keys, credentials (current, pending and
  candidate secrets) and every credential's history of previous secrets.
- ``secrets``: the protected information that is not a credential — every other column the
  vault seals (today the webhook sources' HMAC secrets, current and previous).

Making a backup (:func:`create_backup`) reads the store in one read transaction (a snapshot:
REPEATABLE READ on PostgreSQL, one SQLite read transaction), a page of rows at a time,
decrypts each secret with the store's vault (bound to its row) and writes it into the sealed
file (:mod:`pamflow.backup.sealed`) — so the backup opens with the backup key, never with the
vault's master key. The file is written 0600 under ``tmp/`` and linked into the backup
directory once complete (never replacing a file).

Restoring (:func:`restore_backup`) first reads the whole file and authenticates it, checking
every record against the target store's tables and the manifest, without writing; then, in
ONE transaction, refuses a target whose tables are not empty, inserts every row with its
original id and seals each secret under the *target* store's vault, bound to its row
(:func:`pamflow.vault.credential_aad`). Any failure rolls the transaction back: nothing is
written.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from .. import audit, notifications
from ..models import Credential, CredentialHistory, Device, HostKey, WebhookSource, table_of
from ..vault import Vault, VaultError, credential_aad, webhook_aad
from . import files
from .errors import BackupError, BackupRefused, RestoreRefused
from .keys import BackupKey, Recipient
from .sealed import Manifest, SealedReader, SealedWriter

log = logging.getLogger(__name__)

PAGE = 1000
ACTOR = "robot:backup"


@dataclass(frozen=True)
class Part:
    """One table of a backup kind: which columns are sealed, and their associated data."""

    table: sa.Table
    sealed: dict[str, str]  # column -> vault field
    aad: Callable[[dict[str, Any], str, dict[int, int]], bytes]


def _cred_aad(row: dict[str, Any], fld: str, devices: dict[int, int]) -> bytes:
    return credential_aad(row["id"], row["device_id"], fld)


def _history_aad(row: dict[str, Any], fld: str, devices: dict[int, int]) -> bytes:
    device_id = devices.get(row["credential_id"])
    if device_id is None:
        raise BackupRefused(f"credential_history id {row['id']} names credential "
                            f"{row['credential_id']}, which the backup does not hold")
    return credential_aad(row["credential_id"], device_id, fld)


def _webhook_aad(row: dict[str, Any], fld: str, devices: dict[int, int]) -> bytes:
    return webhook_aad(row["name"], fld)


def _none(row: dict[str, Any], fld: str, devices: dict[int, int]) -> bytes:
    raise AssertionError("no sealed column")


PARTS: dict[str, tuple[Part, ...]] = {
    "credentials": (
        Part(table_of(Device), {}, _none),
        Part(table_of(HostKey), {}, _none),
        Part(table_of(Credential), {"secret": "secret", "pending_secret": "pending",
                                    "candidate_secret": "candidate"}, _cred_aad),
        Part(table_of(CredentialHistory), {"secret": "history"}, _history_aad),
    ),
    "secrets": (
        Part(table_of(WebhookSource), {"secret": "secret", "previous_secret": "previous"},
             _webhook_aad),
    ),
}


@dataclass
class BackupResult:
    """A backup made: its file, size and sha256, and what it holds (never a secret)."""

    name: str
    kind: str
    size: int
    sha256: str
    counts: dict[str, int]
    records: int
    key_ids: list[str]
    path: Path = field(repr=False)

    def as_row(self) -> dict[str, Any]:
        return {"file": self.name, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                "records": self.records, "key ids": ", ".join(self.key_ids),
                **{f"{t} rows": n for t, n in sorted(self.counts.items())}}


# ----------------------------------------------------------------------------- values
def _dump_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


_TIME, _BOOL, _INT, _JSON, _TEXT, _ANY = range(6)


def _kind_of(col: sa.Column) -> int:
    kind = col.type
    if isinstance(kind, sa.types.TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, sa.DateTime):
        return _TIME
    if isinstance(kind, sa.Boolean):
        return _BOOL
    if isinstance(kind, sa.Integer):
        return _INT
    if isinstance(kind, sa.JSON):
        return _JSON
    if isinstance(kind, sa.String | sa.Text):
        return _TEXT
    return _ANY


@cache
def _columns(table: sa.Table) -> dict[str, tuple[int, bool]]:
    """Column name -> (value kind, may be empty), computed once per table."""
    return {c.name: (_kind_of(c), bool(c.nullable) or bool(c.primary_key)) for c in table.c}


def _load_value(name: str, kind: int, nullable: bool, value: Any, where: str) -> Any:
    """A value read from a backup, checked against its column's type (times parsed)."""
    if value is None:
        if not nullable:
            raise BackupRefused(f"{where}: {name} is empty but required")
        return None
    if kind == _TIME:
        if isinstance(value, str) and len(value) <= 64:
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        raise BackupRefused(f"{where}: {name} is not a time")
    value_type = type(value)
    if kind == _TEXT:
        ok = value_type is str and "\0" not in value
    elif kind == _INT:
        ok = value_type is int and -(2**63) < value < 2**63
    elif kind == _BOOL:
        ok = value_type is bool
    elif kind == _JSON:
        ok = value_type is dict or value_type is list
    else:
        ok = True
    if not ok:
        raise BackupRefused(f"{where}: {name} has a value of the wrong type "
                            f"({value_type.__name__})")
    return value


# ----------------------------------------------------------------------------- create
@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection reading one consistent snapshot of the store."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
        return
    # pysqlite starts a transaction only before a write: a dedicated engine whose BEGIN is
    # explicit makes every read below see one WAL snapshot
    snap = sa.create_engine(engine.url, poolclass=sa.pool.NullPool,
                            connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(snap, "connect")
    def _autocommit_driver(dbapi_conn, _record):  # pragma: no cover - trivial
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(snap, "begin")
    def _begin(conn):  # pragma: no cover - trivial
        conn.exec_driver_sql("BEGIN")

    try:
        with snap.connect() as conn, conn.begin():
            yield conn
    finally:
        snap.dispose()


def _pages(conn: Connection, table: sa.Table, page: int) -> Iterator[list[dict[str, Any]]]:
    last = None
    while True:
        query = sa.select(table).order_by(table.c.id).limit(page)
        if last is not None:
            query = query.where(table.c.id > last)
        rows = [dict(r._mapping) for r in conn.execute(query)]
        if not rows:
            return
        yield rows
        last = rows[-1]["id"]


def _records(conn: Connection, kind: str, box: Vault, page: int
             ) -> Iterator[tuple[str, dict[str, Any]]]:
    devices: dict[int, int] = {}  # credential id -> device id (the history's aad)
    for part in PARTS[kind]:
        name = part.table.name
        for rows in _pages(conn, part.table, page):
            for row in rows:
                if name == "credential":
                    devices[row["id"]] = row["device_id"]
                out = {k: _dump_value(v) for k, v in row.items()}
                for column, fld in part.sealed.items():
                    token = row.get(column)
                    if token is None:
                        continue
                    try:
                        out[column] = box.decrypt(token, part.aad(row, fld, devices))
                    except VaultError as exc:
                        raise BackupError(f"{name}.{column} of row id {row['id']} cannot be "
                                          f"decrypted ({exc}); no backup was made. `pamflow vault "
                                          "status` lists such rows") from None
                yield name, out


class _HashingFile:
    def __init__(self, fh: Any) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)


def create_backup(engine: Engine, kind: str, box: Vault, recipients: list[Recipient],
                  page: int = PAGE,
                  on_progress: Callable[[int, int], None] | None = None) -> BackupResult:
    """Write a ``kind`` backup of ``engine``'s store sealed to ``recipients`` (module doc).

    ``on_progress(records written, records in the snapshot)`` is called after each page.
    """
    if kind not in PARTS:
        raise BackupError(f"unknown backup kind {kind!r} (credentials or secrets)")
    if not recipients:
        raise BackupError("no backup recipient configured")
    name = files.new_name(kind)
    final = files.backup_dir() / name
    tmp = files.sub_dir(files.TMP_DIR) / f"{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
            out = _HashingFile(fh)
            meta = {"created_at": datetime.now().astimezone().isoformat(),
                    "source": {"dialect": engine.dialect.name}, "name": name}
            writer = SealedWriter(out, kind, recipients, meta)  # type: ignore[arg-type]
            with _snapshot(engine) as conn:
                total = sum(conn.execute(sa.select(sa.func.count()).select_from(p.table))
                            .scalar_one() for p in PARTS[kind])
                for n, (table, row) in enumerate(_records(conn, kind, box, page), start=1):
                    writer.add(table, row)
                    if on_progress is not None and (n % page == 0 or n == total):
                        on_progress(n, total)
            manifest = writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, final)  # appears whole, never replaces a file
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(final.parent)
    return BackupResult(name, kind, out.size, out.sha.hexdigest(), manifest.counts,
                        manifest.records, [r.key_id for r in recipients], final)


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def performed_message(result: BackupResult) -> tuple[str, str]:
    """Subject and body of "Backup performed" (no secret: names, counts, hash)."""
    counts = ", ".join(f"{n} {t}" for t, n in sorted(result.counts.items())) or "nothing"
    return (f"Backup performed: {result.kind} backup {result.name}",
            f"A {result.kind} backup was made: {result.name}, {result.size} bytes, sha256 "
            f"{result.sha256}, sealed to backup key(s) {', '.join(result.key_ids)}. "
            f"It holds {counts}.")


def error_message(kind: str, reason: str) -> tuple[str, str]:
    """Subject and body of "Error on backup"."""
    return (f"Error on backup: {kind} backup failed", f"The {kind} backup failed: {reason}")


def record_backup(engine: Engine, result: BackupResult, actor: str = ACTOR) -> None:
    """The audit row and the "Backup performed" notification of a backup made."""
    with Session(engine) as db:
        audit.record(db, actor, "backup.created", "backup_file", result.name,
                     {"kind": result.kind, "size": result.size, "sha256": result.sha256,
                      "counts": result.counts, "key_ids": result.key_ids})
        subject, body = performed_message(result)
        notifications.queue(db, "Backup performed", subject, body,
                            {"file": result.name, "kind": result.kind, "size": result.size})
        db.commit()


def record_backup_error(engine: Engine, kind: str, reason: str, actor: str = ACTOR) -> None:
    """The audit row and "Error on backup" notification of a failed backup."""
    with Session(engine) as db:
        audit.record(db, actor, "backup.failed", "backup", kind, {"reason": reason[:500]})
        subject, body = error_message(kind, reason[:500])
        notifications.queue(db, "Error on backup", subject, body, {"kind": kind})
        db.commit()


# ----------------------------------------------------------------------------- read
@dataclass
class RestoreResult:
    """What a verify or restore read (and, for restore, wrote); never a secret."""

    name: str
    kind: str
    size: int
    sha256: str
    counts: dict[str, int]
    records: int
    key_id: str
    restored: bool = False

    def as_row(self) -> dict[str, Any]:
        return {"file": self.name, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                "records": self.records, "key id": self.key_id, "restored": self.restored,
                **{f"{t} rows": n for t, n in sorted(self.counts.items())}}


def _file_sha256(fd: int, size: int) -> str:
    sha, pos = hashlib.sha256(), 0
    while pos < size:
        data = os.pread(fd, min(1 << 20, size - pos), pos)
        if not data:
            break
        sha.update(data)
        pos += len(data)
    return sha.hexdigest()


def _checked_rows(reader: SealedReader, kind: str) -> Iterator[tuple[Part, dict[str, Any]]]:
    """Every record of ``reader`` checked against the target tables, values converted."""
    parts = {p.table.name: p for p in PARTS[kind]}
    order = [p.table.name for p in PARTS[kind]]
    at = 0
    for table, row in reader.records():
        part = parts.get(table)
        if part is None:
            raise BackupRefused(f"backup {reader.name}: a {kind} backup cannot hold {table[:60]!r} "
                                "rows")
        pos = order.index(table)
        if pos < at:
            raise BackupRefused(f"backup {reader.name}: {table} rows after "
                                f"{order[at]} rows: out of order")
        at = pos
        columns = _columns(part.table)
        where = f"backup {reader.name}: {table} row {str(row.get('id'))[:20]}"
        if not row.keys() <= columns.keys():
            unknown = set(row) - set(columns)
            raise BackupRefused(f"{where} has columns the store does not know: "
                                f"{', '.join(sorted(u[:40] for u in unknown)[:5])}")
        if type(row.get("id")) is not int or row["id"] < 1:
            raise BackupRefused(f"{where} has no valid id")
        yield part, {name: _load_value(name, *columns[name], value, where)
                     for name, value in row.items()}


def _open_reader(path: Path, key: BackupKey) -> tuple[int, int, SealedReader]:
    fd, size = files.open_backup(path)
    try:
        return fd, size, SealedReader(fd, size, path.name, key)
    except BaseException:
        os.close(fd)
        raise


def verify_backup(ref: str, key: BackupKey) -> RestoreResult:
    """Read and authenticate the whole backup ``ref`` (a name in the backup directory)."""
    path = files.resolve(ref)
    fd, size, reader = _open_reader(path, key)
    try:
        kind = reader.header.kind
        if kind not in PARTS:
            raise BackupRefused(f"backup {path.name}: unknown kind {kind[:40]!r}")
        for _part, _row in _checked_rows(reader, kind):
            pass
        manifest: Manifest | None = reader.manifest
        assert manifest is not None
        return RestoreResult(path.name, kind, size, _file_sha256(fd, size), manifest.counts,
                             manifest.records, key.key_id)
    finally:
        os.close(fd)


def _ensure_empty(db: Session, kind: str) -> None:
    for part in PARTS[kind]:
        if db.execute(sa.select(part.table.c.id).limit(1)).first() is not None:
            raise RestoreRefused(f"the target store's {part.table.name} table is not empty: a "
                                 f"{kind} backup is restored only into an empty store; nothing "
                                 "was written")


def _fix_sequences(db: Session, kind: str) -> None:
    if db.get_bind().dialect.name != "postgresql":
        return
    for part in PARTS[kind]:
        name = part.table.name
        db.execute(sa.text(
            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "  # noqa: S608 - our names
            f"COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)"))


def restore_backup(engine: Engine, ref: str, key: BackupKey, box: Vault,
                   actor: str = ACTOR) -> RestoreResult:
    """Restore backup ``ref`` into ``engine``'s empty store, sealing under ``box`` (module doc).

    Raises BackupRefused (the file) or RestoreRefused (the store); nothing is written then.
    """
    checked = verify_backup(ref, key)  # pass 1: the whole file authenticated, nothing written
    path = files.resolve(ref)
    fd, size, reader = _open_reader(path, key)
    try:
        kind = reader.header.kind
        with Session(engine) as db:
            try:
                _ensure_empty(db, kind)
                devices: dict[int, int] = {}
                batch: list[dict[str, Any]] = []
                current: Part | None = None
                for part, row in _checked_rows(reader, kind):
                    if current is not None and part is not current:
                        _insert(db, current, batch)
                        batch = []
                    current = part
                    name = part.table.name
                    if name == "credential":
                        devices[row["id"]] = row["device_id"]
                    for column, fld in part.sealed.items():
                        if row.get(column) is not None:
                            row[column] = box.encrypt(row[column], part.aad(row, fld, devices))
                    batch.append(row)
                    if len(batch) >= PAGE:
                        _insert(db, part, batch)
                        batch = []
                if current is not None:
                    _insert(db, current, batch)
                manifest = reader.manifest
                assert manifest is not None
                if _file_sha256(fd, size) != checked.sha256:
                    raise BackupRefused(f"backup {path.name} changed while it was restored")
                _fix_sequences(db, kind)
                audit.record(db, actor, "backup.restored", "backup_file", path.name,
                             {"kind": kind, "sha256": checked.sha256, "counts": manifest.counts,
                              "key_id": key.key_id})
                notifications.queue(db, "Successful recovery attempt",
                                    *recovery_message(path.name, kind, manifest.counts),
                                    {"file": path.name, "kind": kind})
                db.commit()
            except sa.exc.IntegrityError as exc:
                db.rollback()
                raise RestoreRefused(f"backup {path.name} does not fit the target store "
                                     f"({type(exc.orig).__name__}); nothing was written") from None
            except BaseException:
                db.rollback()
                raise
    finally:
        os.close(fd)
    checked.restored = True
    return checked


def recovery_message(name: str, kind: str, counts: dict[str, int]) -> tuple[str, str]:
    """Subject and body of "Successful recovery attempt"."""
    held = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "nothing"
    return (f"Successful recovery attempt: {name}",
            f"The {kind} backup {name} was restored: {held}.")


def _insert(db: Session, part: Part, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = _columns(part.table)
    full = [r if len(r) == len(columns) else
            {c: r[c] if c in r else _default(part.table.c[c]) for c in columns} for r in rows]
    conn = db.connection()
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, part.table, list(columns), full)
    else:
        db.execute(part.table.insert(), full)


def _copy_rows(conn: Connection, table: sa.Table, names: list[str],
               rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: the rows written with COPY, in the session's transaction."""
    import json

    raw = conn.connection.driver_connection
    assert raw is not None
    json_columns = {n for n, (kind, _null) in _columns(table).items() if kind == _JSON}
    quoted = ", ".join(f'"{n}"' for n in names)
    with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([json.dumps(row[n]) if n in json_columns and row[n] is not None
                            else row[n] for n in names])


def _default(col: sa.Column) -> Any:
    default = col.default
    if default is None:
        return None
    arg = getattr(default, "arg", None)
    if callable(arg):
        try:
            return arg(None)
        except TypeError:
            return arg()
    return arg


__all__ = ["PARTS", "BackupResult", "RestoreResult", "create_backup", "record_backup",
           "record_backup_error", "restore_backup", "verify_backup"]
