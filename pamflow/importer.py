"""Batch import of devices and credentials from a spreadsheet (CSV or XLSX).

The domain side of the "Batch import processing" robot: no Prefect here. The robot
(``flows/batch_import.py``) and ``pamflow import FILE`` both use it.

Where files come from
---------------------
Only from the upload directory (``PAMFLOW_UPLOAD_DIR``, default ``<data dir>/uploads``,
created with mode 0700). A path is taken relative to it, or absolute inside it; it is
resolved (symlinks followed) and refused when the result leaves the directory, and the
file is then opened component by component without following symlinks, so a link
swapped in meanwhile is refused too. A missing file, a path outside, a symlink out, a
directory, a device, a FIFO and a file with several hard links all get the same answer
("no such file in the upload directory"), so a caller learns nothing about files
elsewhere. Errors never quote a file's content beyond column names (and row cells of
rejected rows of the uploaded file itself, never a secret).

An XLSX workbook is a zip archive: it is refused before anything is inflated when its
parts add up to more than ``PAMFLOW_IMPORT_MAX_UNCOMPRESSED`` bytes (default 512 MiB),
when a part over 1 MiB inflates more than ``PAMFLOW_IMPORT_MAX_RATIO`` times its stored
size (default 100), or when it has more than 10,000 parts; the bytes actually inflated
are counted too, as the archive's directory may lie.

File
----
``.csv`` (UTF-8, with or without BOM, or Windows-1252; delimiter ``,`` ``;`` or tab, taken
from the header line; an Excel ``sep=;`` first line is honoured) or ``.xlsx`` (the first
worksheet; a formula cell counts by its cached result). The first non-blank row is the
header. Row numbers in reports are the ones a spreadsheet program shows (the header of a
plain CSV is row 1). Blank rows are skipped. Anything else (a binary file, a corrupt
workbook, another extension such as ``.xls``) is refused with
:class:`ImportFileError` before anything is written.

Columns (header names are case-insensitive; spaces and dashes count as ``_``)
-----------------------------------------------------------------------------
======================== ==========================================================
``address`` (required)   IPv4/IPv6 address or host name (aliases ``ip``, ``host``,
                         ``hostname``). With ``tenant``, the device's key.
``name``                 Display name (default: the address).
``platform``             ``linux`` (default), ``unix``, ``windows``, ``ldap``, ``network``.
``ports``                Ports to probe, ``22;3389``, ``22,443`` or ``22 443``
                         (default by platform: 22, windows 5986, ldap 636).
``site``                 Free text.
``tenant``               Must be the import's tenant, or empty (see *Tenant*).
``change_protocol``      ``ssh``, ``winrm`` or ``ldap`` (default: from the platform).
``external_id``          The device's id in the source system.
``username``             Account on the device (aliases ``user``, ``account``, ``login``).
                         With the device, the credential's key. Empty: a device-only row.
``secret``               The account's password (alias ``password``), at most 1,024
                         characters, no line breaks. Encrypted with the vault at once;
                         never echoed in a report.
``kind``                 ``local`` (default), ``domain`` or ``service``.
``change_interval_days`` Days between automatic changes (1-3650).
``policy``               Password policy name (default ``default``).
``auto_change``          ``true``/``false``, ``yes``/``no``, ``1``/``0``.
======================== ==========================================================

Other columns are ignored and named in the result. A cell longer than 4,096 characters
rejects its row. An empty optional cell means "keep what the store has" on an update and
"the default" on a create; a column cannot blank a stored value.

Tenant
------
An import runs for one tenant, given by the caller (``pamflow import --tenant``; for the
robot, the tenant of the webhook source that announced the upload). A row whose
``tenant`` cell names another tenant is rejected; an empty cell means the import's tenant.

Secrets
-------
A secret for a new credential (or one that has none) is stored. A secret that differs
from an existing credential's recorded one is never written over it: when the credential
is ``ok`` with no change in progress, it is stored as the credential's *candidate* and a
``verify`` operation is queued (parameters ``{"candidate": true}``); the verify adopts the
candidate only if it logs in (see :func:`pamflow.rotation.verify_candidates`). A row that
would change the secret of a credential that is not ``ok`` (unverified, invalid, expired)
or has a change in progress is rejected, and so is one whose credential's stored secret
cannot be decrypted: it is an error, never overwritten.

Rows
----
Each row is validated completely before anything is written. A bad row is reported with
its row number, column and reason (never a secret's value) and written to
``<data dir>/import-errors/<UTC timestamp>-<input stem>.errors.csv`` (columns
``row, column, reason``; never beside the input). A second
row with the same tenant, address and username is a duplicate and is rejected; a row
whose device fields disagree with an earlier row for the same device is rejected too.

Rows are upserted idempotently: a device is keyed by ``(tenant, address)``, a credential
by ``(device, username)``. Only real differences are written (a secret is compared with
the decrypted stored one, and with the waiting candidate), so importing the same file
again changes nothing — no new rows, no new ciphertexts, no ``updated_at`` bumps.

Writes go in chunks, one transaction each (a row's device and credential always in the
same transaction). When a chunk's transaction fails, its rows are retried one
transaction per row, so the offending row is isolated and reported and the others land.
Each import writes one audit record and queues a "Batch import finished" notification.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import re
import secrets
import stat
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine

from .models import Credential, CredentialStatus, Device, utcnow
from .vault import Vault, VaultError, credential_aad, vault

MAX_CELL = 4096
MAX_SECRET = 1024
MAX_TEXT = 255
MAX_PORTS = 64
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_ROWS = 1_000_000
MAX_UNCOMPRESSED = 512 * 1024 * 1024  # PAMFLOW_IMPORT_MAX_UNCOMPRESSED
MAX_RATIO = 100  # PAMFLOW_IMPORT_MAX_RATIO
RATIO_FLOOR = 1024 * 1024  # parts smaller than this are not held to the ratio
MAX_MEMBERS = 10_000
CHUNK_SIZE = 5000
_QUERY_BATCH = 2000  # keys per IN (...) when preloading

PLATFORMS = {"linux": [22], "unix": [22], "windows": [5986], "ldap": [636], "network": [22]}
CHANGE_PROTOCOLS = ("ssh", "winrm", "ldap")
KINDS = ("local", "domain", "service")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}

DEVICE_FIELDS = ("name", "platform", "ports", "site", "change_protocol", "external_id")
CREDENTIAL_FIELDS = ("kind", "change_interval_days", "policy", "auto_change")
COLUMNS = ("name", "address", "platform", "ports", "site", "tenant", "change_protocol",
           "external_id", "username", "secret", "kind", "change_interval_days", "policy",
           "auto_change")
ALIASES = {
    "ip": "address", "ip_address": "address", "host": "address", "hostname": "address",
    "password": "secret", "passwd": "secret",
    "user": "username", "account": "username", "login": "username",
    "port": "ports", "change_interval": "change_interval_days",
    "device_name": "name", "protocol": "change_protocol",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_POLICY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PORT_SPLIT = re.compile(r"[;,\s]+")


class ImportFileError(Exception):
    """The file as a whole cannot be imported (not a spreadsheet, corrupt, no header...).

    Nothing was written. The message names the file and the reason, never a cell's value.
    """


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
    from .config import data_dir

    configured = os.environ.get("PAMFLOW_UPLOAD_DIR")
    path = Path(configured).expanduser() if configured else data_dir() / "uploads"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(os.path.realpath(path))


def errors_dir() -> Path:
    """``<data dir>/import-errors`` (mode 0700), where error files are written."""
    from .config import data_dir

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


class Secret:
    """A secret read from a cell: shown as asterisks by ``repr``/``str``, so it never leaks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row: its spreadsheet row number, the column at fault and why."""

    row: int
    column: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "reason": self.reason}


@dataclass(slots=True)
class ImportRow:
    """One validated row: the device it describes and, optionally, a credential on it.

    ``device`` and ``credential`` hold only the fields the row gives (non-empty cells).
    """

    row: int
    tenant: str
    address: str
    device: dict[str, Any]
    username: str | None = None
    secret: Secret | None = None
    credential: dict[str, Any] = field(default_factory=dict)

    @property
    def device_key(self) -> tuple[str, str]:
        return (self.tenant, self.address)


@dataclass
class Sheet:
    """A spreadsheet read and validated, ready to be written."""

    path: str
    format: str
    columns: list[str]
    ignored_columns: list[str]
    total_rows: int
    rows: list[ImportRow]
    errors: list[RowError]
    tenant: str = "default"

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[list[ImportRow]]:
        for start in range(0, len(self.rows), size):
            yield self.rows[start:start + size]

    def __repr__(self) -> str:  # never dump 100,000 rows into a log
        return (f"Sheet({self.path!r}, {self.format}, rows={self.total_rows}, "
                f"valid={len(self.rows)}, rejected={len(self.errors)})")


@dataclass
class ChunkOutcome:
    """What writing a batch of rows did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    devices_created: int = 0
    devices_updated: int = 0
    credentials_created: int = 0
    credentials_updated: int = 0
    errors: list[RowError] = field(default_factory=list)
    isolated: bool = False  # the chunk's transaction failed and rows were retried one by one
    # credentials whose imported secret waits for a verify (queued after the commit)
    verify_ids: list[int] = field(default_factory=list)

    def add(self, other: ChunkOutcome) -> None:
        for name in ("created", "updated", "unchanged", "devices_created", "devices_updated",
                     "credentials_created", "credentials_updated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)
        self.verify_ids.extend(other.verify_ids)
        self.isolated = self.isolated or other.isolated


@dataclass
class ImportResult:
    """The outcome of one import, for the CLI, the flow's artifacts and the notification."""

    path: str
    format: str
    rows: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    devices_created: int
    devices_updated: int
    credentials_created: int
    credentials_updated: int
    errors: list[RowError]
    error_file: str | None
    ignored_columns: list[str]
    tenant: str = "default"
    imports_to_verify: int = 0

    @property
    def empty(self) -> bool:
        return self.rows == 0

    def summary(self) -> dict[str, Any]:
        """Small, secret-free figures (the flow's return value)."""
        return {
            "path": self.path,
            "format": self.format,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "devices_created": self.devices_created,
            "devices_updated": self.devices_updated,
            "credentials_created": self.credentials_created,
            "credentials_updated": self.credentials_updated,
            "imports_to_verify": self.imports_to_verify,
            "tenant": self.tenant,
            "error_file": self.error_file,
            "ignored_columns": list(self.ignored_columns),
            "empty": self.empty,
        }


# ---------------------------------------------------------------------------------------
# reading


def _canonical(header: str) -> str:
    name = re.sub(r"[\s\-]+", "_", str(header).strip().lower())
    return ALIASES.get(name, name)


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _read_csv_records(path: Path, raw: bytes) -> Iterator[tuple[int, list[str]]]:
    if b"\x00" in raw[:65536]:
        raise ImportFileError(f"{path.name}: not a CSV file (it holds binary data)")
    if raw.startswith(b"PK\x03\x04"):
        raise ImportFileError(f"{path.name}: not a CSV file (it is a zip archive; an .xlsx?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            raise ImportFileError(
                f"{path.name}: not a readable CSV file (neither UTF-8 nor Windows-1252 text)"
            ) from None
    first_nl = text.find("\n")
    first = text if first_nl < 0 else text[:first_nl]
    delimiter = None
    if first.lower().startswith("sep=") and len(first.strip()) == 5:
        delimiter = first.strip()[4]
        text = text[first_nl + 1:] if first_nl >= 0 else ""
        first_nl = text.find("\n")
        first = text if first_nl < 0 else text[:first_nl]
    if delimiter is None:
        counts = {d: first.count(d) for d in (",", ";", "\t")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    if csv.field_size_limit() < MAX_FILE_BYTES:
        # a huge cell is reported per row (MAX_CELL); the csv module must not choke first
        csv.field_size_limit(MAX_FILE_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        yield from enumerate(reader, start=1)
    except csv.Error as exc:
        raise ImportFileError(f"{path.name}: malformed CSV near line {reader.line_num}: {exc}") from None


_SHEET_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_ROW, _CELL, _VALUE, _TEXT = (f"{_SHEET_NS}{t}" for t in ("row", "c", "v", "t"))
_COLUMN_LETTERS = re.compile(r"^([A-Z]{1,3})")


def _column_index(ref: str, cache: dict[str, int]) -> int:
    """0-based column of a cell reference such as ``"AB12"``."""
    m = _COLUMN_LETTERS.match(ref)
    letters = m.group(1) if m else ""
    index = cache.get(letters)
    if index is None:
        index = 0
        for ch in letters:
            index = index * 26 + ord(ch) - 64
        index -= 1
        cache[letters] = index
    return index


def _xlsx_number(text: str) -> str:
    try:
        return str(int(text))
    except ValueError:
        try:
            return _cell_text(float(text))
        except ValueError:
            return text


def _iter_sheet(source, shared: Sequence) -> Iterator[tuple[int, list[str]]]:
    """Cell texts per row, straight from the worksheet XML (values only, as data_only does).

    Read with ElementTree's C parser, a few times faster than openpyxl's read-only mode
    (which also parses the whole sheet once more at load time when a writer left out the
    ``<dimension>``); openpyxl stays the writer in tests and the benchmark.
    Numbers come as their text (a date-formatted cell as its serial number).
    """
    from xml.etree.ElementTree import iterparse

    cache: dict[str, int] = {}
    number = 0
    # expat >= 2.4 (bundled: 2.5) limits entity amplification; ElementTree never fetches
    # external entities. openpyxl parses the same parts with the same parser.
    for _event, elem in iterparse(source, events=("end",)):  # noqa: S314
        if elem.tag != _ROW:
            continue
        ref = elem.get("r")
        number = int(ref) if ref and ref.isdigit() else number + 1
        cells: list[str] = []
        column = -1
        for c in elem:
            if c.tag != _CELL:
                continue
            ref = c.get("r")
            column = _column_index(ref, cache) if ref else column + 1
            kind = c.get("t", "n")
            if kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(_TEXT))
            else:
                v = c.find(_VALUE)
                text = "" if v is None or v.text is None else v.text
                if text:
                    if kind == "s":
                        text = str(shared[int(text)])
                    elif kind == "n":
                        text = _xlsx_number(text)
                    elif kind == "b":
                        text = "true" if text == "1" else "false"
            if column >= len(cells):
                cells.extend([""] * (column - len(cells) + 1))
            cells[column] = text
        elem.clear()
        yield number, cells


_REL_NS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_DOC_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"


class _Inflated:
    """Counts the bytes inflated from a workbook's parts against the uncompressed limit
    (the zip directory's sizes were checked before reading, but a directory can lie)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit, self.total = name, limit, 0

    def take(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise ImportFileError(
                f"{self.name}: the workbook inflates to more than {self.limit:,} bytes "
                "(PAMFLOW_IMPORT_MAX_UNCOMPRESSED); refused")

    def open(self, archive: zipfile.ZipFile, part: str) -> _Counted:
        return _Counted(archive.open(part), self)

    def read(self, archive: zipfile.ZipFile, part: str) -> bytes:
        with self.open(archive, part) as source:
            return source.read()


class _Counted:
    """A part of the archive, read through its inflated-bytes budget."""

    def __init__(self, raw, budget: _Inflated) -> None:
        self._raw, self._budget = raw, budget

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        data = self._raw.read(n)
        self._budget.take(len(data))
        return data

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc) -> None:
        self._raw.close()


def _check_archive(name: str, archive: zipfile.ZipFile) -> _Inflated:
    """Refuse a zip bomb from the archive's directory, before anything is inflated."""
    limit = _env_limit("PAMFLOW_IMPORT_MAX_UNCOMPRESSED", MAX_UNCOMPRESSED)
    ratio = _env_limit("PAMFLOW_IMPORT_MAX_RATIO", MAX_RATIO)
    parts = archive.infolist()
    if len(parts) > MAX_MEMBERS:
        raise ImportFileError(f"{name}: {len(parts):,} parts in the workbook, over the "
                              f"{MAX_MEMBERS:,}-part limit; refused")
    total = sum(p.file_size for p in parts)
    if total > limit:
        raise ImportFileError(f"{name}: the workbook's parts inflate to {total:,} bytes, over the "
                              f"{limit:,}-byte limit (PAMFLOW_IMPORT_MAX_UNCOMPRESSED); refused")
    for p in parts:
        if p.file_size > RATIO_FLOOR and p.file_size > ratio * max(p.compress_size, 1):
            raise ImportFileError(
                f"{name}: a part of the workbook inflates {p.file_size / max(p.compress_size, 1):,.0f}"
                f" times its stored size, over the limit of {ratio} (PAMFLOW_IMPORT_MAX_RATIO); "
                "refused")
    return _Inflated(name, limit)


def _xml(archive: zipfile.ZipFile, name: str, budget: _Inflated):
    from xml.etree.ElementTree import fromstring

    return fromstring(budget.read(archive, name))  # noqa: S314 - see _iter_sheet


def _rels(archive: zipfile.ZipFile, part: str, budget: _Inflated) -> dict[str, tuple[str, str]]:
    """A part's relationships: id -> (type, absolute part name)."""
    folder, _, name = part.rpartition("/")
    rels_name = f"{folder}/_rels/{name}.rels" if folder else f"_rels/{name}.rels"
    out = {}
    for rel in _xml(archive, rels_name, budget).iter(f"{_REL_NS}Relationship"):
        target = rel.get("Target", "")
        target = target.lstrip("/") if target.startswith("/") else (
            f"{folder}/{target}" if folder else target)
        parts: list[str] = []
        for piece in target.split("/"):  # resolve "../"
            if piece == "..":
                if parts:
                    parts.pop()
            elif piece not in ("", "."):
                parts.append(piece)
        out[rel.get("Id")] = (rel.get("Type", ""), "/".join(parts))
    return out


def _shared_strings(archive: zipfile.ZipFile, part: str | None, budget: _Inflated) -> list[str]:
    if part is None:
        return []
    from xml.etree.ElementTree import iterparse

    strings = []
    run = f"{_SHEET_NS}r"
    with budget.open(archive, part) as source:
        for _event, si in iterparse(source, events=("end",)):  # noqa: S314 - see _iter_sheet
            if si.tag != f"{_SHEET_NS}si":
                continue
            text = []
            for child in si:  # plain text or rich-text runs; phonetic hints (rPh) left out
                if child.tag == _TEXT:
                    text.append(child.text or "")
                elif child.tag == run:
                    t = child.find(_TEXT)
                    text.append("" if t is None else t.text or "")
            strings.append("".join(text))
            si.clear()
    return strings


def _read_xlsx_records(path: Path, fh) -> Iterator[tuple[int, list[str]]]:
    """The first worksheet's rows. The package is navigated by its relationships (as
    openpyxl does) but without openpyxl's whole-sheet pass for the sheet's dimensions."""
    if not zipfile.is_zipfile(fh):
        raise ImportFileError(f"{path.name}: not an XLSX workbook (not a zip archive: "
                              "corrupt, or another kind of file)")
    try:
        fh.seek(0)
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImportFileError(f"{path.name}: not a readable XLSX workbook "
                              f"({exc.__class__.__name__})") from None
    with archive:
        budget = _check_archive(path.name, archive)
        try:
            workbook = next(target for kind, target in _rels(archive, "", budget).values()
                            if kind.endswith("/officeDocument"))
            rels = _rels(archive, workbook, budget)
            sheets = _xml(archive, workbook, budget).find(f"{_SHEET_NS}sheets")
            first = None if sheets is None else next(iter(sheets), None)
            strings = next((target for kind, target in rels.values()
                            if kind.endswith("/sharedStrings")), None)
            shared = _shared_strings(archive, strings, budget)
        except ImportFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - missing parts, bad XML, bad zip members
            raise ImportFileError(f"{path.name}: not a readable XLSX workbook "
                                  f"({exc.__class__.__name__})") from None
        if first is None:
            return
        try:
            with budget.open(archive, rels[first.get(f"{_DOC_REL_NS}id")][1]) as source:
                yield from _iter_sheet(source, shared)
        except ImportFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt sheet part (zip, XML, index)
            raise ImportFileError(
                f"{path.name}: corrupt XLSX worksheet ({exc.__class__.__name__})"
            ) from None


def _records(path: Path, fh) -> tuple[str, Iterator[tuple[int, list[str]]]]:
    """The format and rows of the open file ``fh`` (``path``: its real path, for names)."""
    size = os.fstat(fh.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise ImportFileError(f"{path.name}: {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return "xlsx", _read_xlsx_records(path, fh)
    if suffix in (".csv", ".txt", ".tsv"):
        try:
            raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ImportFileError(f"{path.name}: cannot be read ({exc.strerror})") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ImportFileError(f"{path.name}: over the {MAX_FILE_BYTES:,}-byte limit")
        return "csv", _read_csv_records(path, raw)
    if suffix == ".xls":
        raise ImportFileError(f"{path.name}: the old binary .xls format is not supported; "
                              "save it as .xlsx or .csv")
    raise ImportFileError(f"{path.name}: unsupported file type {suffix or '(none)'!r}; "
                          "expected .csv or .xlsx")


# ---------------------------------------------------------------------------------------
# validating


def _choice(get, column: str, allowed, into: dict, errors: list, row: int) -> None:
    """A cell that must be one of ``allowed`` (case-insensitive); empty leaves ``into`` alone."""
    value = get(column, "").strip().lower()
    if not value:
        return
    if value in allowed:
        into[column] = value
    else:
        errors.append(RowError(row, column, f"{column} {_show(value)} is not one of "
                                            f"{', '.join(allowed)}"))


def _text(value: str, column: str, errors: list, row: int, limit: int = MAX_TEXT) -> str | None:
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        errors.append(RowError(row, column, f"{column} is {len(value)} characters; at most {limit}"))
        return None
    if _CONTROL.search(value):
        errors.append(RowError(row, column, f"{column} contains control characters"))
        return None
    return value


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)"
_IPV4 = re.compile(rf"^{_OCTET}(?:\.{_OCTET}){{3}}$")


def normalize_address(value: str) -> str | None:
    """The canonical form of an IP address or host name, or None when it is neither."""
    value = value.strip()
    if not value:
        return None
    if _IPV4.match(value):  # the common case, without ipaddress's cost
        return value
    if ":" in value or value[-1].isdigit():
        try:
            return ipaddress.ip_address(value).compressed
        except ValueError:
            if ":" in value:
                return None
    host = value.lower().rstrip(".")
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if all(_HOST_LABEL.match(label) for label in labels) and not labels[-1].isdigit():
        return host
    return None


def parse_ports(value: str) -> list[int]:
    """``"22;3389"``, ``"22,443"`` or ``"22 443"`` as a sorted list; ValueError with a reason."""
    parts = [p for p in _PORT_SPLIT.split(value.strip()) if p]
    ports: set[int] = set()
    for part in parts:
        if part.endswith(".0"):
            part = part[:-2]
        if not part.isdigit():
            raise ValueError(f"ports: {_show(part)} is not a port number")
        port = int(part)
        if not 1 <= port <= 65535:
            raise ValueError(f"ports: {port} is outside 1-65535")
        ports.add(port)
    if len(ports) > MAX_PORTS:
        raise ValueError(f"ports: {len(ports)} ports; at most {MAX_PORTS}")
    return sorted(ports)


def _bool(value: str) -> bool | None:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError


def validate_row(row: int, cells: dict[str, str], tenant: str = "default"
                 ) -> ImportRow | list[RowError]:
    """Check one row (canonical column -> cell text) of an import for ``tenant``.
    Returns the row or its errors."""
    errors: list[RowError] = []
    for column, value in cells.items():
        if len(value) > MAX_CELL:
            errors.append(RowError(row, column, f"cell is {len(value):,} characters, over the "
                                                f"{MAX_CELL:,}-character limit"))
    if errors:
        return errors
    get = cells.get

    raw_address = get("address", "")
    address = normalize_address(raw_address)
    if address is None:
        if raw_address.strip():
            errors.append(RowError(row, "address", f"address {_show(raw_address.strip())} "
                                                   "is not an IP address or host name"))
        else:
            errors.append(RowError(row, "address", "address is required"))
    named = _text(get("tenant", ""), "tenant", errors, row)
    if named and named != tenant:
        errors.append(RowError(row, "tenant", f"tenant {_show(named)} is not this import's tenant "
                                              f"{_show(tenant)}; an import writes into one tenant"))

    device: dict[str, Any] = {}
    name = _text(get("name", ""), "name", errors, row)
    if name:
        device["name"] = name
    _choice(get, "platform", PLATFORMS, device, errors, row)
    ports = get("ports", "").strip()
    if ports:
        try:
            parsed = parse_ports(ports)
            if parsed:
                device["ports"] = parsed
        except ValueError as exc:
            errors.append(RowError(row, "ports", str(exc)))
    site = _text(get("site", ""), "site", errors, row)
    if site:
        device["site"] = site
    _choice(get, "change_protocol", CHANGE_PROTOCOLS, device, errors, row)
    external_id = _text(get("external_id", ""), "external_id", errors, row)
    if external_id:
        device["external_id"] = external_id

    username = _text(get("username", ""), "username", errors, row)
    raw_secret = get("secret", "")
    secret = None
    if raw_secret:
        if len(raw_secret) > MAX_SECRET:
            errors.append(RowError(row, "secret", f"secret is {len(raw_secret)} characters; "
                                                  f"at most {MAX_SECRET}"))
        elif "\x00" in raw_secret or "\n" in raw_secret or "\r" in raw_secret:
            errors.append(RowError(row, "secret", "secret contains a line break or NUL character"))
        elif not username and not get("username", "").strip():
            errors.append(RowError(row, "secret", "a secret needs a username"))
        else:
            secret = Secret(raw_secret)
    credential: dict[str, Any] = {}
    _choice(get, "kind", KINDS, credential, errors, row)
    interval = get("change_interval_days", "").strip()
    if interval:
        text = interval[:-2] if interval.endswith(".0") else interval
        if text.isdigit() and 1 <= int(text) <= 3650:
            credential["change_interval_days"] = int(text)
        else:
            errors.append(RowError(row, "change_interval_days", f"change_interval_days "
                                   f"{_show(interval)} is not a whole number of days in 1-3650"))
    policy = get("policy", "").strip()
    if policy:
        if _POLICY.match(policy):
            credential["policy"] = policy
        else:
            errors.append(RowError(row, "policy", f"policy {_show(policy)} is not a policy name "
                                                  "(letters, digits, . _ -)"))
    auto = get("auto_change", "").strip()
    if auto:
        try:
            credential["auto_change"] = _bool(auto)
        except ValueError:
            errors.append(RowError(row, "auto_change", f"auto_change {_show(auto)} is not "
                                                       "true/false, yes/no or 1/0"))
    if credential and not username and not any(e.column == "username" for e in errors):
        column = next(iter(credential))
        errors.append(RowError(row, column, f"{column} describes a credential but the row has "
                                            "no username"))
    if errors:
        return errors
    return ImportRow(row=row, tenant=tenant, address=address, device=device, username=username,
                     secret=secret, credential=credential)


def _check_consistency(rows: list[ImportRow]) -> tuple[list[ImportRow], list[RowError]]:
    """Reject duplicates and rows whose device fields contradict an earlier row's."""
    seen: dict[tuple[str, str, str | None], int] = {}
    devices: dict[tuple[str, str], ImportRow] = {}
    kept: list[ImportRow] = []
    errors: list[RowError] = []
    for r in rows:
        key = (r.tenant, r.address, r.username)
        first = seen.get(key)
        if first is not None:
            what = "tenant, address and username" if r.username else "tenant and address (no username)"
            errors.append(RowError(r.row, "username" if r.username else "address",
                                   f"duplicate of row {first}: same {what}"))
            continue
        earlier = devices.get(r.device_key)
        if earlier is not None:
            clash = next((f for f in DEVICE_FIELDS if f in r.device and f in earlier.device
                          and r.device[f] != earlier.device[f]), None)
            if clash is not None:
                errors.append(RowError(r.row, clash, f"{clash} {_show(str(r.device[clash]))} "
                                       f"contradicts row {earlier.row} for the same device "
                                       f"({_show(str(earlier.device[clash]))})"))
                continue
            for f, v in r.device.items():  # later rows may complete the device's fields
                earlier.device.setdefault(f, v)
        else:
            devices[r.device_key] = r
        seen[key] = r.row
        kept.append(r)
    # every row of one device carries the device's merged fields, so any row may create it
    for r in kept:
        first = devices[r.device_key]
        if first is not r:
            r.device = first.device
    return kept, errors


def check_tenant(tenant: str) -> str:
    """``tenant`` stripped, if it can name a tenant (1-255 characters, no control
    characters); else ValueError."""
    value = tenant.strip() if isinstance(tenant, str) else ""
    if not value or len(value) > MAX_TEXT or _CONTROL.search(value):
        raise ValueError(f"invalid tenant {_show(str(tenant))}: 1-{MAX_TEXT} characters, "
                         "no control characters")
    return value


def read_sheet(path: str | Path, tenant: str = "default", base: Path | None = None) -> Sheet:
    """Read and validate a file of the upload directory (``base``, default
    :func:`upload_dir`) for ``tenant``; raises ImportFileError when it is not importable."""
    try:
        tenant = check_tenant(tenant)
    except ValueError as exc:
        raise ImportFileError(f"{Path(os.fspath(path)).name}: {exc}") from None
    real, fd = open_upload(path, base)
    with os.fdopen(fd, "rb") as fh:
        return _read_sheet(real, fh, tenant)


def _read_sheet(path: Path, fh, tenant: str) -> Sheet:
    fmt, records = _records(path, fh)
    header: list[str] | None = None
    columns: list[str] = []
    index: list[tuple[int, str]] = []
    ignored: list[str] = []
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    total = 0
    for number, record in records:
        if header is None:
            if not any(c.strip() for c in record):
                continue
            header = record
            header_row = number
            seen: dict[str, int] = {}
            for i, title in enumerate(record):
                if not title.strip():
                    continue
                name = _canonical(title)
                if name in COLUMNS:
                    if name in seen:
                        raise ImportFileError(f"{path.name}: column {name!r} appears twice in the "
                                              f"header (columns {seen[name] + 1} and {i + 1})")
                    seen[name] = i
                    index.append((i, name))
                    columns.append(name)
                else:
                    ignored.append(title.strip()[:60])
            if "address" not in seen:
                # name only the columns recognised, never the row's text: it may be any file
                found = ", ".join(columns) or "none"
                raise ImportFileError(
                    f"{path.name}: row {header_row} is not a header with an 'address' column "
                    f"(columns recognised: {found}); the columns are {', '.join(COLUMNS)}"
                )
            continue
        if not any(c.strip() for c in record):
            continue
        total += 1
        if total > MAX_ROWS:
            raise ImportFileError(f"{path.name}: more than {MAX_ROWS:,} rows; split the file")
        if len(record) > len(header) and any(c.strip() for c in record[len(header):]):
            errors.append(RowError(number, "-", f"row has {len(record)} cells, the header "
                                                f"{len(header)}"))
            continue
        width = len(record)
        cells = {name: record[i] for i, name in index if i < width}
        checked = validate_row(number, cells, tenant)
        if isinstance(checked, list):
            errors.extend(checked)
        else:
            rows.append(checked)
    rows, clashes = _check_consistency(rows)
    errors.extend(clashes)
    errors.sort(key=lambda e: e.row)
    return Sheet(path=str(path), format=fmt, columns=columns, ignored_columns=ignored,
                 total_rows=total, rows=rows, errors=errors, tenant=tenant)


# ---------------------------------------------------------------------------------------
# writing

_DEVICE = Device.__table__
_CREDENTIAL = Credential.__table__


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _preload(conn: Connection, rows: Iterable[ImportRow]) -> tuple[dict, dict]:
    """The stored devices and credentials for these rows' keys, in a few queries."""
    by_tenant: dict[str, set[str]] = {}
    for r in rows:
        by_tenant.setdefault(r.tenant, set()).add(r.address)
    d = _DEVICE.c
    devices: dict[tuple[str, str], Any] = {}
    columns = (d.id, d.tenant, d.address, d.name, d.platform, d.ports, d.site, d.change_protocol,
               d.external_id)
    postgres = conn.dialect.name == "postgresql"
    for tenant, addresses in by_tenant.items():
        for batch in _batched(sorted(addresses), _QUERY_BATCH):
            if postgres:
                # a join on unnest(array), not IN (...): once psycopg prepares the statement,
                # PostgreSQL's generic plan filters the whole tenant against the list, row by
                # row, and each chunk gets slower as the table grows
                keys = sa.func.unnest(sa.cast(sa.literal(list(batch)), ARRAY(sa.String))
                                      ).table_valued("address").render_derived()
                query = sa.select(*columns).join_from(_DEVICE, keys, d.address == keys.c.address
                                                      ).where(d.tenant == tenant)
            else:
                query = sa.select(*columns).where(d.tenant == tenant, d.address.in_(batch))
            for rec in conn.execute(query):
                devices[(rec.tenant, rec.address)] = rec
    c = _CREDENTIAL.c
    credentials: dict[tuple[int, str], Any] = {}
    ids = sorted(rec.id for rec in devices.values())
    for batch in _batched(ids, _QUERY_BATCH):
        query = sa.select(c.id, c.device_id, c.username, c.kind, c.secret, c.secret_version,
                          c.change_interval_days, c.policy, c.auto_change, c.status,
                          c.candidate_secret,
                          c.pending_secret.is_not(None).label("pending")).where(
            c.device_id.in_(batch))
        for rec in conn.execute(query):
            credentials[(rec.device_id, rec.username)] = rec
    return devices, credentials


def _sql_time(conn: Connection, when: datetime) -> str:
    """``when`` as an inline SQL literal, stored exactly as the UTC datetime columns store it.

    One timestamp serves a whole chunk; binding it per row would cost a type conversion
    per row and column (a third of a 100,000-row import's time).
    """
    dialect = conn.dialect
    if dialect.name == "sqlite":
        text = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)(when.astimezone(UTC))
    else:
        text = when.astimezone(UTC).isoformat()
    return f"'{text}'"


def _now_sql(conn: Connection, now: datetime) -> Any:
    return sa.literal_column(_sql_time(conn, now))


def _new_device(r: ImportRow, source: str) -> dict[str, Any]:
    """A new device's varying columns (the constant ones are inlined in the INSERT)."""
    platform = r.device.get("platform", "linux")
    return {
        "name": r.device.get("name", r.address), "address": r.address, "platform": platform,
        "ports": r.device.get("ports") or list(PLATFORMS[platform]), "site": r.device.get("site"),
        "tenant": r.tenant, "source": source, "external_id": r.device.get("external_id"),
        "change_protocol": r.device.get("change_protocol"),
    }


def _device_changes(r: ImportRow, stored: Any) -> dict[str, Any]:
    return {f: v for f, v in r.device.items() if getattr(stored, f) != v}


_FROM_LAST_CHANGE = object()


def _credential_plan(r: ImportRow, stored: Any, box: Vault, now: datetime
                     ) -> tuple[dict[str, Any] | None, bool, RowError | None]:
    """For an existing credential: (update values or None, candidate stored?, error).

    A different secret is written only where none is recorded; over a recorded one it
    becomes the candidate that a verify operation adopts if it logs in (see module doc).
    """
    changes = {f: v for f, v in r.credential.items() if getattr(stored, f) != v}
    values: dict[str, Any] = {}
    candidate = False
    if r.secret is not None:
        plain = r.secret.reveal()
        who = f"credential {r.username}@{r.address}"
        current = None
        if stored.secret is not None:
            try:
                current = box.decrypt(stored.secret, credential_aad(stored.id, stored.device_id,
                                                                    "secret"))
            except VaultError as exc:
                return None, False, RowError(
                    r.row, "secret", f"the recorded secret of {who} cannot be decrypted ({exc}); "
                    "it is left as it is: check the master key (pamflow vault status)")
        if current != plain:
            if stored.pending:
                return None, False, RowError(
                    r.row, "secret", f"{who} has a password change in progress; import its "
                    "secret after the change completes")
            if stored.status != CredentialStatus.ok:
                return None, False, RowError(
                    r.row, "secret", f"{who} is {stored.status}: an import does not replace its "
                    "secret; let reconciliation or a verify settle it first")
            aad = credential_aad(stored.id, stored.device_id, "secret" if current is None
                                 else "candidate")
            if current is None:  # nothing recorded: the imported secret is the first one
                values["secret"] = box.encrypt(plain, aad)
                values["secret_version"] = stored.secret_version + 1
                values["last_changed_at"] = now
            else:
                waiting = None
                if stored.candidate_secret is not None:
                    try:
                        waiting = box.decrypt(stored.candidate_secret, aad)
                    except VaultError as exc:
                        return None, False, RowError(
                            r.row, "secret", f"the imported secret waiting for {who} cannot be "
                            f"decrypted ({exc}); it is left as it is")
                if waiting != plain:
                    values["candidate_secret"] = box.encrypt(plain, aad)
                    candidate = True
    if not changes and not values:
        return None, False, None
    values = {"b_id": stored.id, "updated_at": now, **changes, **values}
    interval = changes.get("change_interval_days", stored.change_interval_days)
    if interval and "last_changed_at" in values:
        values["expires_at"] = now + timedelta(days=interval)
    elif "change_interval_days" in changes:
        values["expires_at"] = _FROM_LAST_CHANGE  # computed from the stored last change
    return values, candidate, None


def _new_credential(r: ImportRow) -> tuple[tuple, tuple]:
    """A new credential's varying columns after ``device_id``, and its group key.

    The group key (secret given, change interval) decides the columns that are the same for
    a whole group (``secret_version``, ``last_changed_at``, ``expires_at``): they are
    inlined in the INSERT. The secret itself is sealed once the row has its id.
    """
    interval = r.credential.get("change_interval_days")
    values = (r.username, r.credential.get("kind", "local"), r.credential.get("policy", "default"),
              interval, r.credential.get("auto_change", True))
    has_secret = r.secret is not None
    return values, (has_secret, interval if has_secret else None)


_CREDENTIAL_INSERT = ("device_id", "username", "kind", "policy", "change_interval_days", "auto_change")
_ROWS_PER_INSERT = 500  # multi-row VALUES per statement (SQLite)


def _insert_credentials(conn: Connection, groups: dict[tuple, list[tuple[tuple, Secret | None]]],
                        now: datetime, box: Vault) -> None:
    """Insert new credentials, each secret sealed to its row's id.

    Plain DBAPI statements (no per-row typing by SQLAlchemy), the columns that are the same
    for a group inlined. A secret is bound to its credential's id, so the id must be known
    before the secret is sealed: on PostgreSQL the ids are drawn from the table's sequence
    and the rows inserted with their sealed secrets (``executemany``, pipelined); on SQLite
    the rows are inserted by multi-row ``INSERT ... RETURNING`` and the sealed secrets
    written by one ``executemany`` UPDATE (cheap there; on PostgreSQL an UPDATE per row
    costs a new row version and index entries).
    """
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    postgres = conn.dialect.name == "postgresql"
    now_text = _sql_time(conn, now)
    sealed: list[tuple[str, int]] = []
    for (has_secret, interval), items in groups.items():
        changed = now_text if has_secret else "NULL"
        expires = _sql_time(conn, now + timedelta(days=interval)) if has_secret and interval else "NULL"
        constants = f"{1 if has_secret else 0}, 'ok', {changed}, {expires}, {now_text}, {now_text}"
        extra = ("id", "secret") if has_secret and postgres else ()
        columns = ", ".join((*extra, *_CREDENTIAL_INSERT))
        one = "(" + ", ".join(mark for _ in (*extra, *_CREDENTIAL_INSERT)) + f", {constants})"
        insert = (f"INSERT INTO credential ({columns}, secret_version, status, last_changed_at, "
                  "expires_at, created_at, updated_at) VALUES ")
        if not has_secret:
            conn.exec_driver_sql(insert + one, [values for values, _secret in items])
        elif postgres:
            ids = conn.exec_driver_sql(
                "SELECT nextval(pg_get_serial_sequence('credential', 'id')) "
                f"FROM generate_series(1, {len(items)})").scalars().all()
            conn.exec_driver_sql(insert + one, [
                (cid, box.encrypt(secret.reveal(), credential_aad(cid, values[0], "secret")), *values)
                for cid, (values, secret) in zip(ids, items, strict=True)])
        else:
            for batch in _batched(items, _ROWS_PER_INSERT):
                result = conn.exec_driver_sql(
                    insert + ", ".join([one] * len(batch)) + " RETURNING id, device_id, username",
                    tuple(v for values, _secret in batch for v in values))
                by_key = {(values[0], values[1]): secret for values, secret in batch}
                for cid, device_id, username in result:
                    secret = by_key[(device_id, username)]
                    sealed.append((box.encrypt(secret.reveal(), credential_aad(cid, device_id,
                                                                               "secret")), cid))
    if sealed:
        conn.exec_driver_sql(f"UPDATE credential SET secret = {mark} WHERE id = {mark}", sealed)


def _write(conn: Connection, rows: Sequence[ImportRow], source: str, box: Vault) -> ChunkOutcome:
    """Plan and write ``rows`` on ``conn`` (inside the caller's transaction)."""
    now = utcnow()
    out = ChunkOutcome()
    devices, credentials = _preload(conn, rows)
    new_devices: dict[tuple[str, str], dict] = {}
    device_updates: dict[int, dict] = {}
    new_credentials: list[tuple[tuple[str, str] | int, tuple, tuple, Secret | None]] = []
    credential_updates: list[dict] = []
    for r in rows:
        key = r.device_key
        stored = devices.get(key)
        creates_device = updates_device = False
        device_update = None
        if stored is None:
            creates_device = key not in new_devices
        elif stored.id not in device_updates:
            changes = _device_changes(r, stored)
            if changes:
                updates_device = True
                device_update = {"b_id": stored.id, "updated_at": now, **changes}
        cred_new = cred_update = None
        candidate = False
        if r.username is not None:
            current = credentials.get((stored.id, r.username)) if stored is not None else None
            if current is None:
                cred_new = _new_credential(r)
            else:
                cred_update, candidate, error = _credential_plan(r, current, box, now)
                if error is not None:  # the whole row is refused, its device part too
                    out.errors.append(error)
                    continue
                if candidate:
                    out.verify_ids.append(current.id)
        if creates_device:
            new_devices[key] = _new_device(r, source)
            out.devices_created += 1
        if updates_device:
            device_updates[stored.id] = device_update
            out.devices_updated += 1
        if cred_new is not None:
            new_credentials.append((stored.id if stored is not None else key, *cred_new, r.secret))
            out.credentials_created += 1
        if cred_update is not None:
            credential_updates.append(cred_update)
            out.credentials_updated += 1
        if creates_device or cred_new is not None:
            out.created += 1
        elif updates_device or cred_update is not None:
            out.updated += 1
        else:
            out.unchanged += 1

    ids: dict[tuple[str, str], int] = {}
    if new_devices:
        now_sql = _now_sql(conn, now)
        d = _DEVICE.c
        stmt = _DEVICE.insert().values(
            maintenance_mode=sa.false(), active=sa.true(), connectivity=sa.literal_column("'unknown'"),
            settings=sa.literal_column("'{}'"), created_at=now_sql, updated_at=now_sql,
        ).returning(d.id, d.tenant, d.address)  # mapped by key: any order will do
        result = conn.execute(stmt, list(new_devices.values()))
        ids = {(rec.tenant, rec.address): rec.id for rec in result}
    if device_updates:
        _update_grouped(conn, _DEVICE, device_updates.values())
    if new_credentials:
        groups: dict[tuple, list[tuple[tuple, Secret | None]]] = {}
        for owner, values, group, secret in new_credentials:
            device_id = owner if isinstance(owner, int) else ids[owner]
            groups.setdefault(group, []).append(((device_id, *values), secret))
        _insert_credentials(conn, groups, now, box)
    if credential_updates:
        _expiry_from_last_change(conn, credential_updates, now)
        _update_grouped(conn, _CREDENTIAL, credential_updates)
    return out


def _expiry_from_last_change(conn: Connection, updates: list[dict], now: datetime) -> None:
    """A new change interval alone moves the expiry: last change (or now) + the interval."""
    pending = {u["b_id"]: u for u in updates if u.get("expires_at") is _FROM_LAST_CHANGE}
    c = _CREDENTIAL.c
    for batch in _batched(sorted(pending), _QUERY_BATCH):
        for rec in conn.execute(sa.select(c.id, c.last_changed_at).where(c.id.in_(batch))):
            u = pending[rec.id]
            u["expires_at"] = (rec.last_changed_at or now) + timedelta(days=u["change_interval_days"])


def _update_grouped(conn: Connection, table: sa.Table, updates: Iterable[dict]) -> None:
    """UPDATE by id, only the changed columns: one executemany per set of changed columns."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for u in updates:
        groups.setdefault(tuple(sorted(u)), []).append(u)
    for columns, params in groups.items():
        stmt = table.update().where(table.c.id == sa.bindparam("b_id")).values(
            {c: sa.bindparam(c) for c in columns if c != "b_id"})
        conn.execute(stmt, params)


def _store_reason(exc: sa.exc.DBAPIError) -> str:
    """The database's own words, first line only (statement and parameters left out)."""
    text = str(getattr(exc, "orig", None) or exc.__class__.__name__).strip().splitlines()
    return f"the store refused the row: {text[0][:200] if text else exc.__class__.__name__}"


def write_rows(rows: Sequence[ImportRow], engine: Engine | None = None, source: str = "import",
               box: Vault | None = None, actor: str = "batch-import") -> ChunkOutcome:
    """Upsert a chunk of validated rows in one transaction.

    If that transaction fails, each row is retried in a transaction of its own, so one
    offending row is reported (``column "-"``) and the others are written. After the
    commit, a verify operation is queued for each imported secret stored as a candidate.
    """
    from . import db

    engine = engine or db.store()
    box = box or vault()
    if not rows:
        return ChunkOutcome()
    try:
        with engine.begin() as conn:
            out = _write(conn, rows, source, box)
    except sa.exc.DBAPIError:
        out = ChunkOutcome(isolated=True)
        for r in rows:
            try:
                with engine.begin() as conn:
                    out.add(_write(conn, [r], source, box))
            except sa.exc.DBAPIError as exc:
                out.errors.append(RowError(r.row, "-", _store_reason(exc)))
    _queue_verifies(engine, out.verify_ids, actor)
    return out


def _queue_verifies(engine: Engine, credential_ids: list[int], actor: str) -> None:
    """A verify per candidate secret. Should this fail, the candidate still waits: any later
    verify of the credential (the password check robot's) tries it."""
    if not credential_ids:
        return
    from . import queue

    queue.enqueue_many(engine, [dict(kind="verify", credential_id=cid, priority=100,
                                     reason="verify an imported password before adopting it",
                                     parameters={"candidate": True})
                                for cid in credential_ids], requested_by=f"import:{actor}")


def error_file_for(path: str | Path, now: datetime | None = None) -> Path:
    """``<data dir>/import-errors/<UTC timestamp>-<input stem>.errors.csv``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80].strip("._") or "import"
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M%S.%fZ")
    return errors_dir() / f"{stamp}-{stem}.errors.csv"


def write_error_file(path: str | Path, errors: list[RowError]) -> str | None:
    """Write the rejected rows to pamflow's own error directory (never beside the input).

    The file is created new (never an existing one, never through a symlink), mode 0600.
    """
    if not errors:
        return None
    for _attempt in range(5):
        target = error_file_for(path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError:
            target = target.with_name(f"{secrets.token_hex(3)}-{target.name}")
            continue
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["row", "column", "reason"])
            out.writerows((e.row, e.column, e.reason) for e in errors)
        return str(target)
    raise OSError("could not create a new error file")


def finish_import(sheet: Sheet, outcome: ChunkOutcome, engine: Engine | None = None,
                  actor: str = "batch-import") -> ImportResult:
    """Write the error file, the audit record and the "Batch import finished" notification."""
    from . import audit, db, notifications

    errors = sorted(sheet.errors + outcome.errors, key=lambda e: (e.row, e.column))
    rejected = len({e.row for e in errors})
    result = ImportResult(
        path=sheet.path, format=sheet.format, rows=sheet.total_rows, created=outcome.created,
        updated=outcome.updated, unchanged=outcome.unchanged, rejected=rejected,
        devices_created=outcome.devices_created, devices_updated=outcome.devices_updated,
        credentials_created=outcome.credentials_created,
        credentials_updated=outcome.credentials_updated, errors=errors,
        error_file=write_error_file(sheet.path, errors), ignored_columns=sheet.ignored_columns,
        tenant=sheet.tenant, imports_to_verify=len(outcome.verify_ids),
    )
    figures = {k: v for k, v in result.summary().items() if k not in ("path", "ignored_columns")}
    name = Path(sheet.path).name
    with db.session(engine) as s:
        audit.record(s, actor, "import", "import_file", name, {"path": sheet.path, **figures})
        body = (f"Import of {name} ({sheet.format}) for tenant {sheet.tenant} finished: "
                f"{result.rows} rows, {result.created} created, {result.updated} updated, "
                f"{result.unchanged} unchanged, {result.rejected} rejected.")
        if result.imports_to_verify:
            body += (f"\n{result.imports_to_verify} imported password(s) differ from the recorded "
                     "ones: each is adopted only after a verify logs in with it.")
        if result.error_file:
            body += f"\nRejected rows are listed in {result.error_file}."
        notifications.queue(s, "Batch import finished", f"Batch import finished: {name}", body,
                            {"file": name, **figures})
        s.commit()
    return result


def record_failed_import(path: str | Path, reason: str, engine: Engine | None = None,
                         actor: str = "batch-import", tenant: str | None = None) -> None:
    """Audit and notify an import whose file was refused as a whole (nothing was written)."""
    from . import audit, db, notifications

    shown = os.fspath(path).replace("\x00", "\\x00")[:4096]  # no NUL into text columns
    name = Path(shown).name[:200] or "(no name)"
    with db.session(engine) as s:
        audit.record(s, actor, "import_failed", "import_file", name,
                     {"path": shown, "tenant": tenant, "reason": reason})
        notifications.queue(s, "Batch import finished", f"Batch import failed: {name}",
                            f"Import of {name} failed, nothing was imported: {reason}",
                            {"file": name, "failed": True, "tenant": tenant})
        s.commit()


def import_file(path: str | Path, engine: Engine | None = None, chunk_size: int = CHUNK_SIZE,
                actor: str = "batch-import", source: str = "import", tenant: str = "default",
                base: Path | None = None) -> ImportResult:
    """Read, validate and upsert a whole file of the upload directory for ``tenant`` (what
    the robot does, without Prefect)."""
    sheet = read_sheet(path, tenant, base)
    total = ChunkOutcome()
    for chunk in sheet.chunks(chunk_size):
        total.add(write_rows(chunk, engine, source, actor=actor))
    return finish_import(sheet, total, engine, actor)


def _main(argv: list[str]) -> int:  # pragma: no cover - convenience
    for arg in argv:
        print(import_file(arg).summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main(sys.argv[1:]))
