"""What the CLI modules share: the consoles, the actor, one-line failures, value formats,
JSON lines, times typed on a command line, and finding devices and credentials."""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlmodel import col

if TYPE_CHECKING:
    from sqlmodel import Session

    from pamflow.models import Credential, Device

console = Console()
err = Console(stderr=True)


def actor() -> str:
    """Who runs this command, for the audit log: ``cli:<login>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "cli"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` (one line, red, on stderr) and exit with ``code``."""
    err.print(f"[red]{escape(message)}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fmt(value: Any) -> str:
    """A value for a table cell."""
    if value is None:
        return "—"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "—"
    return str(value)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (a naive time from the store is UTC), or None."""
    if value is None:
        return None
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()


def json_line(obj: dict[str, Any]) -> None:
    """One JSON object on one line of stdout (JSON lines)."""
    typer.echo(json.dumps(obj, default=str, ensure_ascii=False, separators=(", ", ": ")))


_RELATIVE = re.compile(r"^([+-])\s*(\d{1,6})\s*(s|m|min|h|d|w)$", re.I)
_UNITS = {"s": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, option: str, *, now: datetime, base: datetime | None = None) -> datetime:
    """A time typed on the command line: ``now``, ``+2h`` / ``-30m`` / ``+1d`` (from ``base``,
    default now; units s, m, h, d, w) or ISO 8601 (``2030-01-31T09:00``; no offset means
    UTC). Exits 2 naming ``option`` when it is none of these."""
    value = (text or "").strip()
    if value.lower() == "now":
        return now
    m = _RELATIVE.match(value)
    if m:
        delta = timedelta(**{_UNITS[m.group(3).lower()]: int(m.group(2))})
        return (base or now) + (delta if m.group(1) == "+" else -delta)
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in ("z", "Z") else value)
    except ValueError:
        fail(f"{option}: {value[:40]!r} is not a time (now, +2h, -30m, +1d or ISO 8601 such as "
             "2030-01-31T09:00Z)", code=2)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def find_device(s: Session, ref: str, tenant: str | None) -> Device:
    """A device by id, address or name (``tenant`` narrows); exits with a clear reason."""
    from sqlmodel import select

    from pamflow.inventory import normalize_address
    from pamflow.models import Device

    if ref.isdigit():
        dev = s.get(Device, int(ref))
        if dev is None:
            fail(f"no device with id {ref}")
        return dev
    address = normalize_address(ref)
    matches: list[Device] = []
    if address is not None:
        query = select(Device).where(col(Device.address) == address)
        if tenant:
            query = query.where(col(Device.tenant) == tenant)
        matches = list(s.exec(query))
    if not matches:
        query = select(Device).where(col(Device.name) == ref)
        if tenant:
            query = query.where(col(Device.tenant) == tenant)
        matches = list(s.exec(query))
    if not matches:
        fail(f"no device {ref!r}" + (f" in tenant {tenant!r}" if tenant else ""))
    if len(matches) > 1:
        tenants = ", ".join(sorted({f"{d.tenant} (id {d.id})" for d in matches}))
        fail(f"{ref!r} names several devices: {tenants}; give --tenant or the id")
    return matches[0]


def find_credential(s: Session, ref: str, username: str | None, tenant: str | None
                    ) -> tuple[Credential, Device]:
    """A credential by id, or by device (id, address or name) and username; exits with a
    clear reason when there is none."""
    from sqlmodel import select

    from pamflow.models import Credential, Device

    if username is None:
        if not ref.isdigit():
            fail("give a credential id, or a device and a username")
        cred = s.get(Credential, int(ref))
        dev = s.get(Device, cred.device_id) if cred is not None else None
        if cred is None or dev is None or (tenant and dev.tenant != tenant):
            fail(f"no credential with id {ref}" + (f" in tenant {tenant!r}" if tenant else ""))
        return cred, dev
    dev = find_device(s, ref, tenant)
    found = s.exec(select(Credential).where(col(Credential.device_id) == dev.id,
                                            col(Credential.username) == username)).first()
    if found is None:
        fail(f"no credential {username!r} on {dev.name} ({dev.address})")
    return found, dev


def run_queue() -> None:
    """Run the operation queue in this process until nothing is runnable (what the
    operation executor robot does), printing what it did."""
    from blocks.password_policy import load_policy_block
    from pamflow.db import store
    from pamflow.operations.executor import drain

    done = drain(store(), owner=f"cli-{actor()}", policy_source=load_policy_block)
    console.print(f"ran {done.claimed} operation(s): {done.succeeded} succeeded, {done.failed} "
                  "failed", highlight=False)
