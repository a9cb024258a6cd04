"""Checking every cell of every row, and the rows against each other, before anything is
written; ``read_sheet`` reads and validates a whole file."""


from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from ..hostkeys import HostKeyError, parse_host_key
from .files import (
    open_upload,
)
from .model import (
    _CONTROL,
    _FALSE,
    _HOST_LABEL,
    _POLICY,
    _PORT_SPLIT,
    _TRUE,
    ALIASES,
    CHANGE_PROTOCOLS,
    COLUMNS,
    DEVICE_FIELDS,
    EXTRA_DEVICE_FIELDS,
    FALLBACKS,
    KINDS,
    MAX_CELL,
    MAX_PORTS,
    MAX_ROWS,
    MAX_SECRET,
    MAX_TEXT,
    PLATFORMS,
    ROLE_FIELDS,
    SUDO_MODES,
    ImportFileError,
    ImportRow,
    RowError,
    Secret,
    Sheet,
)
from .read import (
    _normalized,
    _records,
)

# ---------------------------------------------------------------------------------------
# validating

_EXTRAS = frozenset(EXTRA_DEVICE_FIELDS)


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


def _extra_cells(get: Any, device: dict[str, Any], errors: list[RowError], row: int) -> None:
    """The cells that say how a device is changed: accounts, port, sudo, host key, maintenance."""
    for role in ROLE_FIELDS:
        account = _text(get(role, ""), role, errors, row)
        if account:
            device[role] = account
    change_port = get("change_port", "").strip()
    if change_port:
        text = change_port[:-2] if change_port.endswith(".0") else change_port
        if text.isdigit() and 1 <= int(text) <= 65535:
            device["change_port"] = int(text)
        else:
            errors.append(RowError(row, "change_port", f"change_port {_show(change_port)} is not a "
                                                       "port number in 1-65535"))
    _choice(get, "sudo", SUDO_MODES, device, errors, row)
    host_key = get("host_key", "").strip()
    if host_key:
        try:
            device["host_key"] = parse_host_key(host_key)
        except HostKeyError as exc:
            errors.append(RowError(row, "host_key", f"host_key: {exc}"))
    maintenance = get("maintenance_mode", "").strip()
    if maintenance:
        try:
            device["maintenance_mode"] = _bool(maintenance)
        except ValueError:
            errors.append(RowError(row, "maintenance_mode", f"maintenance_mode {_show(maintenance)} "
                                                            "is not true/false, yes/no or 1/0"))


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
    configures = not cells.keys().isdisjoint(_EXTRAS)  # rare: most files configure no device
    if configures:
        _extra_cells(get, device, errors, row)

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
    if errors or address is None:
        return errors
    extras = tuple(f for f in EXTRA_DEVICE_FIELDS if f in device) if configures else ()
    return ImportRow(row=row, tenant=tenant, address=address, device=device, username=username,
                     secret=secret, credential=credential, extras_given=extras)


def check_rows(rows: list[ImportRow]) -> tuple[list[ImportRow], list[RowError]]:
    """Reject duplicates and rows whose device fields contradict an earlier row's.

    Rows of one device share its merged fields afterwards; where the device names an admin
    or reconcile account, each of its rows learns which usernames the kept rows define on
    it (``ImportRow.defined``), so the writer can tell a missing account from one a later
    row (or chunk) creates.
    """
    seen: dict[tuple[str, str, str | None], int] = {}
    devices: dict[tuple[str, str], ImportRow] = {}
    kept: list[ImportRow] = []
    errors: list[RowError] = []
    roles = False
    for r in rows:
        if r.extras_given and not roles:
            roles = any(f in ROLE_FIELDS for f in r.extras_given)
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
        owner = devices[r.device_key]
        if owner is not r:
            r.device = owner.device
    if roles:
        users: dict[tuple[str, str], set[str]] = {}
        for r in kept:
            if r.username:
                users.setdefault(r.device_key, set()).add(r.username)
        defined = {key: frozenset(names) for key, names in users.items()}
        for r in kept:
            if any(role in r.device for role in ROLE_FIELDS):
                r.defined = defined.get(r.device_key, frozenset())
    return kept, errors



def _header(name: str, record: list[str], header_row: int
            ) -> tuple[list[tuple[int, str]], list[str], list[str]]:
    """Which column of ``record`` (the header row) feeds which field: (index, field) pairs in
    column order, the fields, and the titles ignored.

    Aliases never make a file unreadable when one reading makes sense: a column named as
    the field itself, or by an alias without a second meaning (``ip``), wins over aliases
    that have one (``hostname``, ``host``, ``port``), which are then read as that second
    meaning (``name``, ``change_port``) or, when that is taken too, ignored. Only the same
    field named twice with no such way out (``user`` and ``username``, ``ip`` and
    ``address``, ``host`` and ``hostname``) refuses the file, naming the columns.
    """
    claims: dict[str, list[tuple[int, str, str]]] = {}
    ignored: list[str] = []
    for i, title in enumerate(record):
        if not title.strip():
            continue
        norm = _normalized(title)
        field = ALIASES.get(norm, norm)
        if field in COLUMNS:
            claims.setdefault(field, []).append((i, norm, title.strip()))
        else:
            ignored.append(title.strip()[:60])
    taken: dict[str, tuple[int, str, str]] = {}
    yielding: list[tuple[str, tuple[int, str, str]]] = []
    for field, heads in claims.items():
        if len(heads) == 1:
            taken[field] = heads[0]
            continue
        first_of: dict[str, int] = {}
        for i, norm, _title in heads:
            if norm in first_of:
                raise ImportFileError(f"{name}: column {norm!r} appears twice in the header "
                                      f"(columns {first_of[norm] + 1} and {i + 1})")
            first_of[norm] = i
        firm = [h for h in heads if h[1] not in FALLBACKS]
        if len(firm) != 1:
            shown = " and ".join(f"{h[2][:60]!r} (column {h[0] + 1})" for h in heads)
            raise ImportFileError(f"{name}: row {header_row}: columns {shown} "
                                  f"{'both' if len(heads) == 2 else 'all'} mean "
                                  f"{field!r}; keep one (or rename the others)")
        taken[field] = firm[0]
        yielding += [(field, h) for h in heads if h is not firm[0]]
    for field, head in yielding:
        second = FALLBACKS[head[1]]
        if second in taken or second in claims:
            ignored.append(f"{head[2][:60]} (other columns give the {field} and the {second})")
        else:
            taken[second] = head
    index = sorted((head[0], field) for field, head in taken.items())
    return index, [field for _i, field in index], ignored


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
            index, columns, ignored = _header(path.name, record, header_row)
            if "address" not in columns:
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
    rows, clashes = check_rows(rows)
    errors.extend(clashes)
    errors.sort(key=lambda e: e.row)
    return Sheet(path=str(path), format=fmt, columns=columns, ignored_columns=ignored,
                 total_rows=total, rows=rows, errors=errors, tenant=tenant)
