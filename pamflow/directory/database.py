"""Device database import: devices from an external SQL database (a SQLAlchemy URL and a
query), read-only, upserted by an external id column.

Read-only is enforced three times: the query must be one ``SELECT`` (or ``WITH ...
SELECT``) statement with no data-changing keyword; the connection is opened read-only —
PostgreSQL ``SET TRANSACTION READ ONLY`` (and ``default_transaction_read_only``), SQLite
``mode=ro`` with ``PRAGMA query_only`` — and the transaction is rolled back, never
committed. Other databases are refused. A SQLite file is read only from the upload
directory (``PAMFLOW_UPLOAD_DIR``), symlinks resolved.

The password never sits in the URL (a URL carrying one is refused): the block references a
credential in pamflow's vault. Every row is read before anything is written, so a query
that fails, times out or returns more than ``max_rows`` rows changes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from .devices import DeviceImportResult, DeviceRecord, guess_platform, upsert_devices
from .errors import DeviceDatabaseError, DirectorySettingsError
from .records import Rejection

MAX_QUERY = 20_000
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_WRITES = re.compile(
    r"\b(insert|update|delete|merge|upsert|create|drop|alter|truncate|grant|revoke|"
    r"copy|call|do|execute|exec|lock|vacuum|analyze|reindex|cluster|pragma|attach|detach|"
    r"set|reset|listen|notify|prepare|commit|rollback|begin|savepoint|into|for\s+update|"
    r"for\s+share|pg_\w*|lo_\w*|dblink\w*)\b", re.I)
DIALECTS = ("postgresql", "sqlite")
FIELDS = ("external_id", "name", "address", "platform", "site", "ports", "operating_system")


@dataclass(frozen=True)
class DatabaseSettings:
    name: str
    url: str
    query: str
    tenant: str = "default"
    columns: dict[str, str] = field(default_factory=dict)  # field -> result column
    password_device: str | None = None  # vault reference of the database password
    password_username: str | None = None  # default: the URL's user name
    default_platform: str = "linux"
    max_rows: int = 100_000
    timeout: float = 60.0

    def mapping(self) -> dict[str, str]:
        """Field → result column: each field defaults to a column of its own name (the
        optional ones — platform, site, ports, operating_system — are used when present)."""
        out = {k: k for k in FIELDS}
        out.update(self.columns or {})
        return {k: v for k, v in out.items() if v}

    def check(self) -> DatabaseSettings:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        where = f"device database {self.name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.name or ""):
            raise DirectorySettingsError(f"device database name {str(self.name)[:40]!r}: use "
                                         "1-63 letters, digits, '.', '_' or '-'")
        try:
            url = make_url(self.url)
        except (ArgumentError, ValueError):
            raise DirectorySettingsError(f"{where}: url is not a SQLAlchemy URL") from None
        if url.password:
            raise DirectorySettingsError(f"{where}: the url carries a password: keep it in the "
                                         "vault and name it in password_device instead")
        if url.get_backend_name() not in DIALECTS:
            raise DirectorySettingsError(f"{where}: {url.get_backend_name()} is not supported "
                                         f"(read-only is enforced for {', '.join(DIALECTS)})")
        unknown = set(self.columns or {}) - set(FIELDS)
        if unknown:
            raise DirectorySettingsError(f"{where}: unknown column mapping {sorted(unknown)}")
        check_query(self.query, where)
        if not 1 <= self.max_rows <= 10_000_000:
            raise DirectorySettingsError(f"{where}: max_rows must be 1-10000000")
        if not 0 < self.timeout <= 3600:
            raise DirectorySettingsError(f"{where}: timeout must be 1-3600 seconds")
        return self


def check_query(query: str, where: str) -> str:
    """``query`` if it is one read-only SELECT; DeviceDatabaseError saying why not."""
    if not isinstance(query, str) or not query.strip():
        raise DeviceDatabaseError(f"{where}: the query is empty")
    if len(query) > MAX_QUERY or "\x00" in query:
        raise DeviceDatabaseError(f"{where}: the query is longer than {MAX_QUERY} characters "
                                  "or contains NUL")
    bare = _STRINGS.sub("''", _COMMENTS.sub(" ", query)).strip()
    bare = bare[:-1].rstrip() if bare.endswith(";") else bare
    if ";" in bare:
        raise DeviceDatabaseError(f"{where}: the query must be one statement (no ';' inside)")
    first = bare.split(None, 1)[0].lower() if bare else ""
    if first not in ("select", "with"):
        raise DeviceDatabaseError(f"{where}: only a SELECT query is allowed, not "
                                  f"{first[:20].upper() or 'nothing'}")
    found = _WRITES.search(bare)
    if found:
        raise DeviceDatabaseError(f"{where}: the query is not a plain read: "
                                  f"{found.group(0)[:20].upper()!r} is not allowed")
    return query


def _readonly_engine(settings: DatabaseSettings, password: str | None) -> Engine:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from pamflow.inventory.files import upload_dir

    url = make_url(settings.url)
    backend = url.get_backend_name()
    where = f"device database {settings.name}"
    if backend == "sqlite":
        path = url.database or ""
        if not path or path == ":memory:" or path.startswith("file:"):
            raise DeviceDatabaseError(f"{where}: a SQLite url must name a file of the upload "
                                      "directory")
        base = os.path.realpath(upload_dir())
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(base, path))
        if os.path.commonpath([base, real]) != base:
            raise DeviceDatabaseError(f"{where}: the SQLite file is outside the upload "
                                      f"directory {base}")
        if not os.path.isfile(real):
            raise DeviceDatabaseError(f"{where}: no SQLite file {os.path.basename(real)!r} in "
                                      f"the upload directory")
        ro = sa.URL.create("sqlite", database=f"file:{real}?mode=ro", query={"uri": "true"})
        engine = sa.create_engine(ro, poolclass=sa.pool.NullPool,
                                  connect_args={"timeout": settings.timeout})

        @sa.event.listens_for(engine, "connect")
        def _query_only(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    if password is not None:
        url = url.set(password=password)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    ms = int(settings.timeout * 1000)
    return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={
        "connect_timeout": max(1, int(min(settings.timeout, 30))),
        "options": f"-c default_transaction_read_only=on -c statement_timeout={ms}"})


def _cell(value: Any, what: str, limit: int = 255) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not valid UTF-8") from None
    text = str(value).strip()
    if len(text) > limit:
        raise ValueError(f"{what} is {len(text)} characters, more than {limit}")
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError(f"{what} contains control characters")
    return text or None


def _ports(value: Any) -> list[int] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, list | tuple) else re.split(r"[,;\s]+", str(value).strip())
    ports = []
    for item in items:
        if item in ("", None):
            continue
        try:
            port = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"port {str(item)[:20]!r} is not a number") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is not 1-65535")
        ports.append(port)
    if len(ports) > 64:
        raise ValueError("more than 64 ports")
    return sorted(set(ports))


def read_database(settings: DatabaseSettings, password: str | None
                  ) -> tuple[list[DeviceRecord], set[str], list[Rejection]]:
    """Every row of the query, read-only: (records, ids present, rejections)."""
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    settings.check()
    where = f"device database {settings.name}"
    mapping = settings.mapping()
    engine = _readonly_engine(settings, password)
    records: list[DeviceRecord] = []
    present: set[str] = set()
    rejected: list[Rejection] = []
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            result = conn.execution_options(stream_results=True).execute(sa.text(settings.query))
            columns = list(result.keys())
            missing = [c for k, c in mapping.items() if c not in columns
                       and k in ("external_id", "name", "address")]
            missing += [c for k, c in mapping.items() if c not in columns and c not in missing
                        and k in settings.columns]
            if missing:
                raise DeviceDatabaseError(f"{where}: the query's result has no column "
                                          f"{', '.join(missing)} (it has {', '.join(columns)[:300]})")
            mapping = {k: c for k, c in mapping.items() if c in columns}
            row_no = 0
            while True:
                rows = result.mappings().fetchmany(1000)
                if not rows:
                    break
                for row in rows:
                    row_no += 1
                    if row_no > settings.max_rows:
                        raise DeviceDatabaseError(f"{where}: the query returned more than "
                                                  f"{settings.max_rows} rows: narrow it or raise "
                                                  "max_rows (nothing was imported)")
                    label = f"row {row_no}"
                    try:
                        ext = _cell(row[mapping["external_id"]], "external id")
                        if ext is None:
                            raise ValueError("no external id")
                        present.add(ext)
                        label = f"row {row_no} (id {ext[:60]})"
                        name = _cell(row[mapping["name"]], "name")
                        if name is None:
                            raise ValueError("no name")
                        os_text = (_cell(row[mapping["operating_system"]], "operating system", 1024)
                                   if "operating_system" in mapping else None)
                        platform = (_cell(row[mapping["platform"]], "platform", 40)
                                    if "platform" in mapping else None)
                        records.append(DeviceRecord(
                            external_id=ext, name=name,
                            address=_cell(row[mapping["address"]], "address"),
                            platform=(platform.lower() if platform else
                                      guess_platform(os_text, settings.default_platform)),
                            site=_cell(row[mapping["site"]], "site") if "site" in mapping else None,
                            ports=_ports(row[mapping["ports"]]) if "ports" in mapping else None,
                            extra={"operating_system": os_text} if os_text else {},
                            where=label))
                    except ValueError as exc:
                        rejected.append(Rejection(label, str(exc)))
            conn.rollback()
    except DeviceDatabaseError:
        raise
    except SQLAlchemyError as exc:
        raise DeviceDatabaseError(f"{where}: {_db_reason(exc, password)}") from None
    finally:
        engine.dispose()
    return records, present, rejected


def _db_reason(exc: BaseException, password: str | None) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
    if password:
        text = text.replace(password, "********")
    return f"{type(orig).__name__}: {text}"


def import_database(engine: Engine, settings: DatabaseSettings, password: str | None,
                    actor: str = "robot:device-database-import",
                    progress: Callable[[float, str], None] | None = None) -> DeviceImportResult:
    """Read the query's rows (read-only), then upsert them as devices of the tenant."""
    records, present, rejected = read_database(settings, password)
    if progress is not None:
        progress(50, f"{len(records)} rows read")
    return upsert_devices(engine, records, tenant=settings.tenant, source="database",
                          origin=settings.name, actor=actor, complete=True, present=present,
                          rejected=rejected, progress=progress)
