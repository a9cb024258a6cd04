"""What an import is made of: its limits, rows, errors and results (no I/O)."""


from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import PamflowError

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

SUDO_MODES = ("nopasswd", "password", "none")  # the SSH target's (pamflow.targets.ssh)
# how a device is changed: its admin and reconcile accounts (usernames of credentials of the
# same device), the port and sudo mode used for changes, its pinned SSH host key
ROLE_FIELDS = ("admin_username", "reconcile_username")
SETTING_FIELDS = {"change_port": "port", "sudo": "sudo"}  # column -> Device.settings key
EXTRA_DEVICE_FIELDS = (*ROLE_FIELDS, *SETTING_FIELDS, "host_key", "maintenance_mode")
DEVICE_FIELDS = ("name", "platform", "ports", "site", "change_protocol", "external_id",
                 *EXTRA_DEVICE_FIELDS)
CREDENTIAL_FIELDS = ("kind", "change_interval_days", "policy", "auto_change")
COLUMNS = ("name", "address", "platform", "ports", "site", "tenant", "change_protocol",
           "external_id", "username", "secret", "kind", "change_interval_days", "policy",
           "auto_change", *EXTRA_DEVICE_FIELDS)
ALIASES = {
    "ip": "address", "ip_address": "address", "ipaddress": "address", "host": "address",
    "hostname": "address", "password": "secret", "passwd": "secret",
    "user": "username", "account": "username", "login": "username",
    "port": "ports", "change_interval": "change_interval_days",
    "device_name": "name", "protocol": "change_protocol",
    "admin": "admin_username", "admin_account": "admin_username", "admin_user": "admin_username",
    "reconcile": "reconcile_username", "reconcile_account": "reconcile_username",
    "reconcile_user": "reconcile_username", "ssh_port": "change_port", "sudo_mode": "sudo",
    "ssh_host_key": "host_key", "hostkey": "host_key", "maintenance": "maintenance_mode",
}
# an alias that yields to another column claiming the same meaning, and is then read as
# this column instead: beside an ``ip`` column a ``hostname`` is the device's name, beside
# ``ports`` a ``port`` is the port changes use
FALLBACKS = {"hostname": "name", "host": "name", "port": "change_port"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_POLICY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PORT_SPLIT = re.compile(r"[;,\s]+")


class ImportFileError(PamflowError):
    """The file as a whole cannot be imported (not a spreadsheet, corrupt, no header...).

    Nothing was written. The message names the file and the reason, never a cell's value.
    """



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
    # the fields of EXTRA_DEVICE_FIELDS this row's own cells give (rows of one device share
    # their merged fields; a problem with one of these is reported on the rows that gave it)
    extras_given: tuple[str, ...] = ()
    # usernames that valid rows of this file define on the same device (set only for
    # devices naming an admin or reconcile account): those exist once their rows are written
    defined: frozenset[str] = frozenset()

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
