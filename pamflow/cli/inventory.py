"""CLI commands: ``devices``, ``credentials`` and ``import FILE``.

``devices add`` registers a device and, with ``--admin-username`` / ``--reconcile-username``,
its admin account (the one ``sudo chpasswd`` runs as: the fast way to change passwords) and
reconcile account, whose secrets are read like ``credentials add`` reads one; ``devices set``
changes a device, its accounts, the port and sudo mode used for changes, its pinned host key
and its maintenance mode. Both check every value as an import checks a cell, and both are
audited.

``devices pin-host-key`` (and ``--host-key``) records a device's SSH host key before the
first connection, so the SSH target checks even the first one; ``devices host-keys`` shows
the keys recorded, pinned or first seen, with their fingerprints.

``credentials add`` reads the secret from a hidden prompt (or the first line of stdin when
stdin is not a terminal), never from the command line; ``credentials show`` prints the
secret only with ``--show-secret``, and ``credentials secret`` prints nothing but the
secret, for a pipe; both record that they did in the audit log.

Every ``list``/``show`` takes ``--json``: JSON lines, one object per device, credential or
host key, with stable keys and ISO 8601 times, never a secret.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.table import Table
from sqlmodel import col

from .common import actor as _actor
from .common import console, err, fail, find_credential, find_device, fmt, iso, json_line

if TYPE_CHECKING:
    from sqlmodel import Session

    from pamflow.inventory import ImportRow, RowError
    from pamflow.models import Credential, Device

devices_app = typer.Typer(help="Managed devices: add, set, list, show, host keys.",
                          no_args_is_help=True)
credentials_app = typer.Typer(help="Credentials on devices: add, list, show, secret, rotate.",
                              no_args_is_help=True)

ROLES = {"admin_username": "admin_credential_id", "reconcile_username": "reconcile_credential_id"}
UNSETTABLE = ("admin_username", "reconcile_username", "change_port", "sudo")


def _row_errors(errors: list[RowError]) -> NoReturn:
    for e in errors:
        err.print(f"{e.column}: {e.reason}", style="red", highlight=False, markup=False,
                  soft_wrap=True)
    raise typer.Exit(1)


def _checked(row: ImportRow | list[RowError]) -> ImportRow:
    if isinstance(row, list):
        _row_errors(row)
    return row


def _usernames(s: Session, ids: set[int]) -> dict[int, str]:
    """Credential id -> username, for the admin/reconcile accounts of some devices."""
    from sqlmodel import select

    from pamflow.models import Credential

    if not ids:
        return {}
    return {cid: name for cid, name in s.exec(
        select(col(Credential.id), col(Credential.username)).where(col(Credential.id).in_(ids)))
        if cid is not None}


def _role_ids(devices: list[Device]) -> set[int]:
    return {i for d in devices for i in (d.admin_credential_id, d.reconcile_credential_id) if i}


def device_json(dev: Device, names: dict[int, str]) -> dict[str, Any]:
    """A device as JSON (stable keys, ISO times; its settings are never secret)."""
    settings = dict(dev.settings or {})
    return {
        "id": dev.id, "name": dev.name, "address": dev.address, "platform": dev.platform,
        "ports": list(dev.ports or []), "site": dev.site, "tenant": dev.tenant,
        "source": dev.source, "external_id": dev.external_id,
        "source_account": dev.source_account, "instance_state": dev.instance_state,
        "tags": dict(dev.tags or {}), "removed_at": iso(dev.removed_at),
        "change_protocol": dev.change_protocol, "change_port": settings.get("port"),
        "sudo": settings.get("sudo"),
        "admin_credential_id": dev.admin_credential_id,
        "admin_username": names.get(dev.admin_credential_id or 0),
        "reconcile_credential_id": dev.reconcile_credential_id,
        "reconcile_username": names.get(dev.reconcile_credential_id or 0),
        "maintenance_mode": dev.maintenance_mode, "active": dev.active,
        "connectivity": dev.connectivity, "connectivity_detail": dev.connectivity_detail,
        "last_seen_at": iso(dev.last_seen_at), "last_checked_at": iso(dev.last_checked_at),
        "created_at": iso(dev.created_at), "updated_at": iso(dev.updated_at),
        "settings": settings,
    }


def credential_json(cred: Credential, dev: Device | None) -> dict[str, Any]:
    """A credential as JSON: never its secret, only whether a change or an imported
    password is waiting."""
    roles = [role for role, cid in (("admin", dev.admin_credential_id if dev else None),
                                    ("reconcile", dev.reconcile_credential_id if dev else None))
             if cid is not None and cid == cred.id]
    return {
        "id": cred.id, "device_id": cred.device_id, "device": dev.name if dev else None,
        "address": dev.address if dev else None, "tenant": dev.tenant if dev else None,
        "username": cred.username, "kind": cred.kind, "roles": roles, "status": cred.status,
        "status_detail": cred.status_detail, "secret_version": cred.secret_version,
        "has_secret": cred.secret is not None, "policy": cred.policy,
        "change_interval_days": cred.change_interval_days, "auto_change": cred.auto_change,
        "change_pending": cred.pending_secret is not None,
        "candidate_waiting": cred.candidate_secret is not None, "attention": cred.attention,
        "last_changed_at": iso(cred.last_changed_at), "last_verified_at": iso(cred.last_verified_at),
        "expires_at": iso(cred.expires_at), "created_at": iso(cred.created_at),
        "updated_at": iso(cred.updated_at),
    }


# ---------------------------------------------------------------------------------------
# devices


def _read_secrets(usernames: list[str]) -> list[str]:
    """One secret per account: hidden prompts, or one line of stdin each (in order)."""
    secrets: list[str] = []
    for username in usernames:
        if sys.stdin.isatty():
            secret = typer.prompt(f"Secret of {username}", hide_input=True, confirmation_prompt=True)
        else:
            secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            fail(f"no secret given for {username} (type it at the prompt, or pipe one line per "
                 "account on stdin: the admin account's first, then the reconcile account's)")
        secrets.append(secret)
    return secrets


def _config_cells(change_port: int | None, sudo: str | None, host_key: str | None,
                  maintenance: bool | None, admin_username: str | None,
                  reconcile_username: str | None) -> dict[str, str]:
    cells = {"change_port": "" if change_port is None else str(change_port), "sudo": sudo or "",
             "host_key": host_key or "", "admin_username": admin_username or "",
             "reconcile_username": reconcile_username or "",
             "maintenance_mode": "" if maintenance is None else str(maintenance).lower()}
    return {k: v for k, v in cells.items() if v}


def _check_host_key(host_key: str | None, platform: str | None, change_protocol: str | None) -> None:
    """Refuse a bad host key, or one for a device without SSH, before anything is written."""
    from pamflow import hostkeys

    if host_key is None:
        return
    try:
        hostkeys.parse_host_key(host_key)
    except hostkeys.HostKeyError as exc:
        fail(f"host_key: {exc}")
    protocol = hostkeys.protocol_of(platform, change_protocol)
    if protocol != "ssh":
        fail(f"host_key: the device is changed over {protocol}, not SSH")


_CHANGE_PORT = typer.Option(None, "--change-port", min=1, max=65535,
                            help="The port changes connect to (SSH, WinRM or LDAP; default: the "
                                 "usual port of the protocol among the device's ports).")
_SUDO = typer.Option(None, "--sudo", help="How the admin runs chpasswd on SSH devices: nopasswd "
                                          "(default: a sudoers rule without password), password "
                                          "(sudo asks for the admin's own password) or none "
                                          "(the admin is root).")
_HOST_KEY = typer.Option(None, "--host-key",
                         help='Pin its SSH host key: "ssh-ed25519 AAAA..." or a known_hosts line.')


@devices_app.command("add")
def devices_add(
    address: str = typer.Argument(..., help="IP address or host name."),
    name: str = typer.Option(None, help="Display name (default: the address)."),
    platform: str = typer.Option("linux", help="linux, unix, windows, ldap or network."),
    ports: str = typer.Option(None, help='Ports, e.g. "22" or "5986;3389" (default by platform).'),
    site: str = typer.Option(None),
    tenant: str = typer.Option("default"),
    change_protocol: str = typer.Option(None, help="ssh, winrm or ldap (default from platform)."),
    external_id: str = typer.Option(None),
    host_key: str = _HOST_KEY,
    change_port: int = _CHANGE_PORT,
    sudo: str = _SUDO,
    maintenance: bool = typer.Option(False, "--maintenance",
                                     help="Add it in maintenance mode (no robot changes it)."),
    admin_username: str = typer.Option(None, "--admin-username",
                                       help="Its admin account, added with the device: the "
                                            "account that changes the others' passwords (sudo "
                                            "chpasswd, net user, LDAP admin bind)."),
    reconcile_username: str = typer.Option(None, "--reconcile-username",
                                           help="Its reconcile account (may be the admin's): "
                                                "resets a password nobody knows any more."),
) -> None:
    """Register a device, and with --admin-username its admin account.

    The accounts' secrets are read from hidden prompts or, when stdin is not a terminal,
    one line of stdin per account (the admin's first, then the reconcile account's);
    never from the command line.
    """
    from sqlmodel import select

    from pamflow import audit, db, inventory
    from pamflow.models import Credential, Device, HostKey

    try:
        tenant = inventory.check_tenant(tenant)
    except ValueError as exc:
        fail(str(exc))
    cells = {"address": address, "name": name or "", "platform": platform, "ports": ports or "",
             "site": site or "", "tenant": tenant, "change_protocol": change_protocol or "",
             "external_id": external_id or "",
             **_config_cells(change_port, sudo, host_key, True if maintenance else None,
                             admin_username, reconcile_username)}
    row = _checked(inventory.validate_row(0, cells, tenant))
    _check_host_key(host_key, row.device.get("platform"), row.device.get("change_protocol"))
    engine = db.store()
    with db.session(engine) as s:
        existing = s.exec(select(Device).where(col(Device.tenant) == row.tenant,
                                               col(Device.address) == row.address)).first()
        if existing is not None:
            fail(f"device {row.address} already exists in tenant {row.tenant} (id {existing.id})")
    accounts = list(dict.fromkeys(u for u in (row.device.get("admin_username"),
                                               row.device.get("reconcile_username")) if u))
    rows = [row]
    if accounts:
        rows = []
        for username, secret in zip(accounts, _read_secrets(accounts), strict=True):
            account = dict(cells) if not rows else {"address": address, "tenant": tenant}
            rows.append(_checked(inventory.validate_row(len(rows), {
                **account, "username": username, "secret": secret}, tenant)))
        rows, clashes = inventory.check_rows(rows)
        if clashes:
            _row_errors(clashes)
    out = inventory.write_rows(rows, engine, source="manual", actor=_actor())
    if out.errors:
        _row_errors(out.errors)
    with db.session(engine) as s:
        dev = s.exec(select(Device).where(col(Device.tenant) == row.tenant,
                                          col(Device.address) == row.address)).one()
        audit.record(s, _actor(), "create", "device", dev.id,
                     {"address": dev.address, "tenant": dev.tenant, "platform": dev.platform,
                      **{k: v for k, v in device_json(dev, {}).items()
                         if k in ("change_port", "sudo", "maintenance_mode") and v}})
        creds = list(s.exec(select(Credential).where(col(Credential.device_id) == dev.id)))
        for cred in creds:
            roles = credential_json(cred, dev)["roles"]
            audit.record(s, _actor(), "create", "credential", cred.id,
                         {"device_id": dev.id, "username": cred.username, "kind": cred.kind,
                          "roles": roles})
        keys = list(s.exec(select(HostKey).where(col(HostKey.device_id) == dev.id)))
        s.commit()
    console.print(f"device {dev.id} added: {dev.name} ({dev.address}, {dev.platform}, "
                  f"ports {fmt(dev.ports)}, tenant {dev.tenant})", highlight=False)
    for cred in creds:
        roles = " and ".join(credential_json(cred, dev)["roles"])
        console.print(f"{roles} account {cred.username}: credential {cred.id}, secret stored "
                      "encrypted", highlight=False)
    settings = dict(dev.settings or {})
    if settings:
        console.print("settings: " + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())),
                      highlight=False)
    for key_row in keys:
        console.print(f"host key pinned: port {key_row.port} {key_row.key_type} "
                      f"{key_row.fingerprint}", highlight=False)


def _device_state(s: Session, dev: Device) -> dict[str, Any]:
    """What ``devices set`` may change, as it reads (accounts by username)."""
    from sqlmodel import select

    from pamflow.models import HostKey

    names = _usernames(s, _role_ids([dev]))
    state = {k: v for k, v in device_json(dev, names).items()
             if k in ("name", "ports", "site", "change_protocol", "external_id", "change_port",
                      "sudo", "admin_username", "reconcile_username", "maintenance_mode")}
    state["host_keys"] = [f"port {k.port} {k.key_type} {k.fingerprint}" for k in s.exec(
        select(HostKey).where(col(HostKey.device_id) == dev.id).order_by(col(HostKey.port)))]
    return state


@devices_app.command("set")
def devices_set(
    device: str = typer.Argument(..., help="Device id, address or name."),
    tenant: str = typer.Option(None, help="The device's tenant, when the address is ambiguous."),
    name: str = typer.Option(None, help="Display name."),
    ports: str = typer.Option(None, help='Ports to probe, e.g. "22" or "5986;3389".'),
    site: str = typer.Option(None),
    change_protocol: str = typer.Option(None, help="ssh, winrm or ldap."),
    external_id: str = typer.Option(None),
    admin_username: str = typer.Option(None, "--admin-username",
                                       help="Make this account of the device its admin account."),
    reconcile_username: str = typer.Option(None, "--reconcile-username",
                                           help="Make this account of the device its reconcile "
                                                "account."),
    change_port: int = _CHANGE_PORT,
    sudo: str = _SUDO,
    host_key: str = _HOST_KEY,
    maintenance: bool = typer.Option(None, "--maintenance/--no-maintenance",
                                     help="Maintenance mode on (no robot changes it) or off."),
    unset: list[str] = typer.Option([], "--unset",
                                    help="Clear a field: admin_username, reconcile_username, "
                                         "change_port or sudo (repeatable)."),
) -> None:
    """Change a device: its accounts, the port and sudo mode used for changes, its pinned
    host key, maintenance mode, name, ports... Checked like an import cell; audited.

    The admin and reconcile accounts must be credentials of the device already (add them
    with `pamflow credentials add`).
    """
    from sqlmodel import select

    from pamflow import audit, db, inventory
    from pamflow.models import Credential, Device, utcnow

    wrong = [u for u in unset if u not in UNSETTABLE]
    if wrong:
        fail(f"--unset {wrong[0]!r}: one of {', '.join(UNSETTABLE)}", code=2)
    given = {"name": name, "ports": ports, "site": site, "change_protocol": change_protocol,
             "external_id": external_id,
             **_config_cells(change_port, sudo, host_key, maintenance, admin_username,
                             reconcile_username)}
    given = {k: v for k, v in given.items() if v is not None and v != ""}
    both = sorted(set(given) & set(unset))
    if both:
        fail(f"{both[0]} is both given and unset", code=2)
    if not given and not unset:
        fail("nothing to change: give at least one option (see --help)", code=2)
    engine = db.store()
    with db.session(engine) as s:
        dev = find_device(s, device, tenant)
        before = _device_state(s, dev)
        for role in ROLES:
            username = given.get(role)
            if username is not None and s.exec(select(Credential).where(
                    col(Credential.device_id) == dev.id,
                    col(Credential.username) == username.strip())).first() is None:
                fail(f"{role}: no account {username!r} on device {dev.name} ({dev.address}); add "
                     f"it first: pamflow credentials add {dev.id} {username}")
    _check_host_key(host_key, dev.platform, change_protocol or dev.change_protocol)
    if given:
        row = _checked(inventory.validate_row(0, {"address": dev.address, "tenant": dev.tenant,
                                                  **given}, dev.tenant))
        out = inventory.write_rows([row], engine, source="manual", actor=_actor())
        if out.errors:
            _row_errors(out.errors)
    with db.session(engine) as s:
        current = s.get(Device, dev.id)
        if current is None:
            fail(f"device {dev.id} was removed meanwhile")
        if unset:
            settings = dict(current.settings or {})
            for field in unset:
                if field in ROLES:
                    setattr(current, ROLES[field], None)
                else:
                    settings.pop({"change_port": "port"}.get(field, field), None)
            current.settings = settings
            current.updated_at = utcnow()
            s.add(current)
            s.flush()
        after = _device_state(s, current)
        changes = {k: {"from": before[k], "to": after[k]} for k in after if after[k] != before[k]}
        if changes:
            audit.record(s, _actor(), "update", "device", current.id, changes)
        s.commit()
    if not changes:
        console.print(f"device {dev.id} {dev.name}: nothing changed", highlight=False)
        return
    console.print(f"device {dev.id} {current.name} ({current.address}) updated:", highlight=False)
    for field, change in changes.items():
        console.print(f"  {field}: {fmt(change['from'])} -> {fmt(change['to'])}", highlight=False)


@devices_app.command("pin-host-key")
def devices_pin_host_key(
    device: str = typer.Argument(..., help="Device id, address or name."),
    key: str = typer.Argument(..., help='The SSH host key: "ssh-ed25519 AAAA..." (a .pub line) '
                                        "or a known_hosts line."),
    port: int = typer.Option(None, help="SSH port (default: a [host]:port in the line, else the "
                                        "device's SSH port)."),
    tenant: str = typer.Option(None, help="The device's tenant, when the address is ambiguous."),
) -> None:
    """Pin a device's SSH host key: the only key accepted on that port from now on.

    Replaces any key recorded for the port (pinned or first seen); recorded in the audit log.
    """
    from pamflow import db, hostkeys

    with db.session() as s:
        dev = find_device(s, device, tenant)
        try:
            row, replaced = hostkeys.pin(s, dev, key, port=port, actor=_actor())
        except hostkeys.HostKeyError as exc:
            fail(f"cannot pin the host key of {dev.name}: {exc}")
        s.commit()
    console.print(f"pinned {row.key_type} {row.fingerprint} for device {dev.id} {dev.name} "
                  f"({dev.address}) port {row.port}", highlight=False)
    for old in replaced:
        console.print(f"replaced {old}", highlight=False)


def _host_keys_json(engine: Any, dev_id: int) -> list[dict[str, Any]]:
    from pamflow import hostkeys

    return [{"device_id": dev_id, "port": r.key.port, "key_type": r.key.key_type,
             "fingerprint": r.key.fingerprint, "key": f"{r.key.key_type} {r.key.key_base64}",
             "recorded_at": iso(r.key.first_seen_at), "pinned_by": r.pinned_by}
            for r in hostkeys.recorded_host_keys(engine, dev_id)]


@devices_app.command("host-keys")
def devices_host_keys(
    device: str = typer.Argument(..., help="Device id, address or name."),
    tenant: str = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per key."),
) -> None:
    """The SSH host keys recorded for a device, with their fingerprints."""
    from pamflow import db

    engine = db.store()
    with db.session(engine) as s:
        dev = find_device(s, device, tenant)
    keys = _host_keys_json(engine, dev.id or 0)
    if as_json:
        for key in keys:
            json_line(key)
        return
    table = Table(title=f"Host keys of {dev.name} ({dev.address}): {len(keys)}",
                  title_justify="left")
    for column in ("port", "type", "fingerprint", "recorded", "how"):
        table.add_column(column)
    for k in keys:
        table.add_row(str(k["port"]), k["key_type"], k["fingerprint"], (k["recorded_at"] or "")[:16],
                      f"pinned by {k['pinned_by']}" if k["pinned_by"] else "first contact")
    console.print(table, highlight=False)
    if not keys:
        console.print("no key recorded: the first SSH connection will record the key offered "
                      "(pin one with pamflow devices pin-host-key)", highlight=False)


@devices_app.command("list")
def devices_list(
    tenant: str = typer.Option(None),
    site: str = typer.Option(None),
    platform: str = typer.Option(None),
    search: str = typer.Option(None, help="Part of the name or address."),
    limit: int = typer.Option(200, help="At most this many devices."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per device."),
) -> None:
    """List devices with their connectivity and number of credentials."""
    import sqlalchemy as sa
    from sqlmodel import select

    from pamflow import db
    from pamflow.models import Credential, Device

    with db.session() as s:
        query = select(Device)
        if tenant:
            query = query.where(col(Device.tenant) == tenant)
        if site:
            query = query.where(col(Device.site) == site)
        if platform:
            query = query.where(col(Device.platform) == platform.lower())
        if search:
            like = f"%{search}%"
            query = query.where(sa.or_(col(Device.name).like(like), col(Device.address).like(like)))
        total = s.exec(select(sa.func.count()).select_from(query.subquery())).one()
        devices = list(s.exec(query.order_by(col(Device.tenant), col(Device.name),
                                             col(Device.id)).limit(limit)))
        counts: dict[int, int] = {dev_id: n for dev_id, n in s.exec(
            select(col(Credential.device_id), sa.func.count()).where(
                col(Credential.device_id).in_([d.id for d in devices]))
            .group_by(col(Credential.device_id))).all()} if devices else {}
        names = _usernames(s, _role_ids(devices))
    if as_json:
        for d in devices:
            json_line({**device_json(d, names), "credential_count": counts.get(d.id or 0, 0)})
        return
    table = Table(title=f"Devices ({len(devices)} of {total})", title_justify="left")
    for column in ("id", "name", "address", "platform", "ports", "site", "tenant",
                   "connectivity", "credentials", "admin", "source"):
        table.add_column(column, justify="right" if column in ("id", "credentials") else "left")
    for d in devices:
        table.add_row(str(d.id), d.name, d.address, d.platform, fmt(d.ports), fmt(d.site),
                      d.tenant, d.connectivity, str(counts.get(d.id or 0, 0)),
                      fmt(names.get(d.admin_credential_id or 0)), d.source)
    console.print(table)


@devices_app.command("show")
def devices_show(
    device: str = typer.Argument(..., help="Device id, address or name."),
    tenant: str = typer.Option(None),
    as_json: bool = typer.Option(False, "--json",
                                 help="One JSON object, with its credentials and host keys."),
) -> None:
    """A device's details, its credentials (never their secrets) and host keys."""
    from sqlmodel import select

    from pamflow import db
    from pamflow.models import Credential

    engine = db.store()
    with db.session(engine) as s:
        dev = find_device(s, device, tenant)
        creds = list(s.exec(select(Credential).where(col(Credential.device_id) == dev.id)
                            .order_by(col(Credential.username))))
        names = _usernames(s, _role_ids([dev]))
    keys = _host_keys_json(engine, dev.id or 0)
    data = device_json(dev, names)
    if as_json:
        json_line({**data, "credential_count": len(creds),
                   "credentials": [{k: v for k, v in credential_json(c, dev).items()
                                    if k in ("id", "username", "kind", "roles", "status")}
                                   for c in creds],
                   "host_keys": keys})
        return
    table = Table(show_header=False, title=f"Device {dev.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for field in ("name", "address", "platform", "ports", "site", "tenant", "source", "external_id",
                  "source_account", "instance_state", "change_protocol", "change_port", "sudo",
                  "admin_username", "reconcile_username",
                  "maintenance_mode", "active", "connectivity", "connectivity_detail"):
        table.add_row(field.replace("_username", " account"), fmt(data[field]))
    for field in ("last_seen_at", "last_checked_at", "created_at", "updated_at"):
        table.add_row(field, fmt(getattr(dev, field)))
    table.add_row("host keys", ", ".join(f"port {k['port']} {k['fingerprint']}" for k in keys) or "—")
    console.print(table, highlight=False)
    _print_credentials(creds, {dev.id or 0: dev})


# ---------------------------------------------------------------------------------------
# credentials


def _read_secret() -> str:
    if sys.stdin.isatty():
        return str(typer.prompt("Secret", hide_input=True, confirmation_prompt=True))
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


@credentials_app.command("add")
def credentials_add(
    device: str = typer.Argument(..., help="Device id, address or name."),
    username: str = typer.Argument(...),
    tenant: str = typer.Option(None, help="The device's tenant, when the address is ambiguous."),
    kind: str = typer.Option("local", help="local, domain or service."),
    change_interval_days: int = typer.Option(None, help="Days between automatic changes."),
    policy: str = typer.Option(None, help="Password policy name."),
    generate: bool = typer.Option(False, "--generate",
                                  help="Generate the secret by the default policy instead of "
                                       "reading it (it is not printed)."),
) -> None:
    """Add a credential. The secret is read from a hidden prompt or stdin, never an argument."""
    from sqlmodel import select

    from pamflow import audit, db, inventory
    from pamflow.models import Credential

    engine = db.store()
    with db.session(engine) as s:
        dev = find_device(s, device, tenant)
        exists = s.exec(select(Credential).where(col(Credential.device_id) == dev.id,
                                                 col(Credential.username) == username.strip())).first()
        if exists is not None:
            fail(f"credential {username}@{dev.address} already exists (id {exists.id})")
    if generate:
        from pamflow.passwords import PasswordPolicy

        secret = PasswordPolicy().generate()
    else:
        secret = _read_secret()
        if not secret:
            fail("no secret given (type it at the prompt or pipe it on stdin)")
    cells = {"address": dev.address, "tenant": dev.tenant, "username": username, "secret": secret,
             "kind": kind, "change_interval_days": str(change_interval_days or ""),
             "policy": policy or ""}
    row = _checked(inventory.validate_row(0, cells, dev.tenant))
    out = inventory.write_rows([row], engine, source="manual", actor=_actor())
    if out.errors:
        _row_errors(out.errors)
    with db.session(engine) as s:
        cred = s.exec(select(Credential).where(col(Credential.device_id) == dev.id,
                                               col(Credential.username) == row.username)).one()
        audit.record(s, _actor(), "create", "credential", cred.id,
                     {"device_id": dev.id, "username": cred.username, "kind": cred.kind})
        s.commit()
    console.print(f"credential {cred.id} added: {cred.username}@{dev.address} ({cred.kind}), "
                  "secret stored encrypted", highlight=False)


def _print_credentials(creds: list[Credential], devices: dict[int, Device]) -> None:
    table = Table(title=f"Credentials ({len(creds)})", title_justify="left")
    for column in ("id", "device", "username", "kind", "status", "version", "interval",
                   "last changed", "expires", "auto"):
        table.add_column(column,
                         justify="right" if column in ("id", "version", "interval") else "left")
    for c in creds:
        dev = devices.get(c.device_id)
        table.add_row(str(c.id), f"{dev.name} ({dev.address})" if dev else str(c.device_id),
                      c.username, c.kind, c.status, str(c.secret_version),
                      fmt(c.change_interval_days), fmt(c.last_changed_at), fmt(c.expires_at),
                      "yes" if c.auto_change else "no")
    console.print(table)


@credentials_app.command("list")
def credentials_list(
    device: str = typer.Option(None, help="Only this device (id, address or name)."),
    tenant: str = typer.Option(None),
    status: str = typer.Option(None, help="ok, unverified, invalid or expired."),
    limit: int = typer.Option(200),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per credential."),
) -> None:
    """List credentials (never their secrets)."""
    from sqlmodel import select

    from pamflow import db
    from pamflow.models import Credential, Device

    with db.session() as s:
        query = select(Credential)
        if device:
            query = query.where(col(Credential.device_id) == find_device(s, device, tenant).id)
        elif tenant:
            query = query.join(Device, col(Device.id) == col(Credential.device_id)).where(
                col(Device.tenant) == tenant)
        if status:
            query = query.where(col(Credential.status) == status)
        creds = list(s.exec(query.order_by(col(Credential.device_id), col(Credential.username))
                            .limit(limit)))
        ids = {c.device_id for c in creds}
        devices = {d.id or 0: d for d in s.exec(select(Device).where(col(Device.id).in_(ids)))} \
            if ids else {}
    if as_json:
        for c in creds:
            json_line(credential_json(c, devices.get(c.device_id)))
        return
    _print_credentials(creds, devices)


@credentials_app.command("show")
def credentials_show(
    credential: str = typer.Argument(..., help="Credential id, or a device (id, address, name)."),
    username: str = typer.Argument(None, help="The username, when a device is given."),
    tenant: str = typer.Option(None),
    show_secret: bool = typer.Option(False, "--show-secret",
                                     help="Print the decrypted secret (recorded in the audit log)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object (never the secret)."),
) -> None:
    """A credential's details; the secret only with --show-secret."""
    from pamflow import audit, db
    from pamflow.vault import VaultError, credential_aad, vault

    if show_secret and as_json:
        fail("--json never carries a secret; read it with: pamflow credentials secret ID", code=2)
    box = vault() if show_secret else None
    with db.session() as s:
        cred, dev = find_credential(s, credential, username, tenant)
        secret_text = "********" if cred.secret else "— (none stored)"
        if box is not None and cred.secret:
            try:
                secret_text = box.decrypt(cred.secret, credential_aad(cred.id or 0, cred.device_id,
                                                                      "secret"))
            except VaultError as exc:
                fail(f"cannot decrypt the secret of {cred.username}@{dev.address}: {exc}")
            audit.record(s, _actor(), "secret_viewed", "credential", cred.id,
                         {"device_id": dev.id, "username": cred.username,
                          "via": "credentials show --show-secret"})
            s.commit()
    if as_json:
        json_line(credential_json(cred, dev))
        return
    table = Table(show_header=False, title=f"Credential {cred.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("device", f"{dev.name} ({dev.address}, tenant {dev.tenant}, id {dev.id})")
    for field in ("username", "kind", "status", "status_detail", "secret_version", "policy",
                  "change_interval_days", "auto_change", "last_changed_at", "last_verified_at",
                  "expires_at", "created_at", "updated_at"):
        table.add_row(field, fmt(getattr(cred, field)))
    table.add_row("roles", ", ".join(credential_json(cred, dev)["roles"]) or "—")
    table.add_row("change pending", "yes" if cred.pending_secret else "no")
    table.add_row("imported password waiting for a verify", "yes" if cred.candidate_secret else "no")
    table.add_row("secret", secret_text)
    console.print(table, highlight=False)


@credentials_app.command("secret")
def credentials_secret(
    credential: str = typer.Argument(..., help="Credential id, or a device (id, address, name)."),
    username: str = typer.Argument(None, help="The username, when a device is given."),
    tenant: str = typer.Option(None),
    no_newline: bool = typer.Option(False, "--no-newline",
                                    help="Print the secret's exact characters, no newline after."),
    force: bool = typer.Option(False, "--force", help="Print it even on a terminal."),
) -> None:
    """Print the decrypted secret and a newline, nothing else: for a pipe or $(...).

    Refused when stdout is a terminal (it would stay in the scrollback) unless --force;
    recorded in the audit log (secret_viewed) before it is printed. Exit 1 with one line
    on stderr when there is no such credential, no secret, or it cannot be decrypted.
    """
    from pamflow import audit, db
    from pamflow.vault import VaultError, credential_aad, vault

    if sys.stdout.isatty() and not force:
        fail("refusing to print a secret on a terminal: pipe it (pamflow credentials secret ID "
             "| ...) or add --force", code=2)
    box = vault()
    with db.session() as s:
        cred, dev = find_credential(s, credential, username, tenant)
        who = f"{cred.username}@{dev.address} (credential {cred.id})"
        if not cred.secret:
            fail(f"no secret stored for {who}")
        try:
            secret = box.decrypt(cred.secret, credential_aad(cred.id or 0, cred.device_id, "secret"))
        except VaultError as exc:
            fail(f"cannot decrypt the secret of {who}: {exc}")
        audit.record(s, _actor(), "secret_viewed", "credential", cred.id,
                     {"device_id": dev.id, "username": cred.username,
                      "via": "credentials secret" + (" --force" if force else "")})
        s.commit()
    data = (secret if no_newline else secret + "\n").encode("utf-8")
    out = getattr(sys.stdout, "buffer", None)
    if out is not None:
        sys.stdout.flush()
        out.write(data)
        out.flush()
    else:  # a text-only stream (tests): the same characters
        sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()


@credentials_app.command("rotate")
def credentials_rotate(
    credential: str = typer.Argument(..., help="Credential id, or a device (id, address, name)."),
    username: str = typer.Argument(None, help="The username, when a device is given."),
    tenant: str = typer.Option(None),
    run: bool = typer.Option(False, "--run",
                             help="Run the queue in this process now and wait (without the "
                                  "platform); by default the operation executor robot does it "
                                  "within seconds."),
) -> None:
    """Change a credential's password now: queue a change (ahead of scheduled work).

    The new password is generated by the credential's policy and set on the device (sudo
    chpasswd through the device's admin account when it has one, else passwd as the
    account), verified, then recorded; never printed. Exit 1 when --run and it failed.
    """
    from pamflow import db
    from pamflow.models import Operation
    from pamflow.operations import queue

    engine = db.store()
    with db.session(engine) as s:
        cred, dev = find_credential(s, credential, username, tenant)
    try:
        done = queue.enqueue(engine, "change", cred.id, priority=10, requested_by=_actor(),
                             reason="requested from the CLI")
    except queue.QueueError as exc:
        fail(f"cannot queue a change of {cred.username} on {dev.name}: {exc}")
    what = "joined the change already queued" if done.coalesced else "queued"
    console.print(f"change of {cred.username} on {dev.name} (credential {cred.id}) {what}: "
                  f"operation {done.id}", highlight=False)
    if not run:
        return
    from .common import run_queue

    run_queue()
    with db.session(engine) as s:
        op = s.get(Operation, done.id)
    if op is None or op.state != "succeeded":
        fail(f"operation {done.id}: {op.state if op else 'gone'}"
             + (f": {op.error}" if op is not None and op.error else ""))
    console.print(f"password of {cred.username} on {dev.name} changed (operation {done.id})",
                  highlight=False)


# ---------------------------------------------------------------------------------------
# import


def _prefect_api() -> str | None:
    """The reachable Prefect API (``PREFECT_API_URL`` or the local default), or None."""
    from pamflow.cli.platform import DEFAULT_PORT, _api_healthy

    api = os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/api"
    return api if _api_healthy(api) else None


ROBOT = "batch-import-processing/batch-import-processing"


def import_(
    file: Path = typer.Argument(..., help="The spreadsheet (.csv or .xlsx): a file of the upload "
                                          "directory (PAMFLOW_UPLOAD_DIR, default <data dir>/uploads), "
                                          "relative to it or absolute; with --copy, any file you "
                                          "can read."),
    tenant: str = typer.Option("default", "--tenant",
                               help="The tenant to import into; rows naming another tenant are "
                                    "rejected."),
    copy: bool = typer.Option(False, "--copy",
                              help="Copy FILE (read with your rights) into the upload directory "
                                   "under a new name, then import the copy. Needed for a file "
                                   "outside the upload directory; the copy stays there."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any row was rejected."),
    robot: bool = typer.Option(False, "--robot",
                               help="Run the batch-import-processing robot on a worker (a flow "
                                    "run in the Prefect UI) and wait for it, instead of "
                                    "importing in this process."),
    timeout: float = typer.Option(600, help="With --robot: seconds to wait for the run."),
) -> None:
    """Import devices and credentials from a spreadsheet, as the batch import robot does.

    Imports read only from the upload directory (symlinks leaving it are refused); use
    --copy for a file elsewhere. By default the import runs in this process; with --robot
    the robot's deployment runs it on a worker and the flow run shows in the Prefect UI.
    Columns (see the README): address (or ip; hostname beside an ip column is the name),
    name, platform, ports, site, tenant, change_protocol, external_id, username, password,
    kind, change_interval_days, policy, auto_change, admin_username, reconcile_username,
    change_port (or ssh_port), sudo, host_key, maintenance_mode.
    Exit code 2 when the file cannot be read at all (nothing is imported; the reason is
    printed, one line); with --strict, 1 when rows were rejected. Rejected rows go to
    <data dir>/import-errors/.
    """
    from pamflow import inventory

    try:
        base = inventory.upload_dir()
        if copy:
            path = inventory.copy_to_uploads(file.expanduser(), base)
            console.print(f"copied to {path}", highlight=False)
        else:
            path = Path(os.path.abspath(file.expanduser()))
    except (inventory.ImportFileError, OSError) as exc:
        fail(f"cannot import: {exc}", code=2)
    if robot:
        summary, errors = _import_by_robot(path, base, tenant, timeout)
    else:
        try:
            result = inventory.import_file(path, actor=_actor(), tenant=tenant)
        except inventory.ImportFileError as exc:
            hint = ""
            if not copy and not Path(os.path.realpath(path)).is_relative_to(base):
                hint = (f" (the file is outside the upload directory {base}: move it there or "
                        "pass --copy)")
            fail(f"cannot import: {exc}{hint}", code=2)
        summary, errors = result.summary(), [e.as_dict() for e in result.errors]
    _print_summary(summary, errors)
    if strict and summary["rejected"]:
        raise typer.Exit(1)


def _import_by_robot(path: Path, base: Path, tenant: str, timeout: float
                     ) -> tuple[dict, list[dict]]:
    """Run the import robot's deployment for ``path`` and read its outcome from the audit log."""
    import sqlalchemy as sa
    from sqlmodel import select

    from pamflow import db, platform
    from pamflow.models import AuditLog, utcnow

    api = _prefect_api()
    if api is None:
        fail("--robot needs the Prefect API (start it with `pamflow up`, or set "
             "PREFECT_API_URL)", code=2)
    relative = os.path.relpath(path, base) if Path(path).is_relative_to(base) else str(path)
    started = utcnow()
    try:
        run = platform.run_deployment(api, ROBOT, {"path": relative, "tenant": tenant},
                                      timeout=timeout,
                                      on_state=lambda s: err.print(f"robot run: {s}"))
    except Exception as exc:  # noqa: BLE001 - no deployment, API refused: one line, exit 2
        fail(f"cannot start the import robot: {exc.__class__.__name__}: {str(exc)[:200]}",
             code=2)
    state = run.get("state") or {}
    err.print(f"flow run {run['id']} ({run.get('name')}): {state.get('name')}", highlight=False)
    with db.session() as s:
        row = s.exec(select(AuditLog).where(
            col(AuditLog.entity) == "import_file", col(AuditLog.entity_id) == Path(path).name,
            col(AuditLog.at) >= started).order_by(sa.desc(col(AuditLog.id)))).first()
    if row is None or state.get("type") != "COMPLETED":
        reason: Any = (row.detail.get("reason") if row is not None and row.action == "import_failed"
                       else (state.get("message") or "").splitlines()[0:1])
        if isinstance(reason, list):
            reason = reason[0] if reason else f"the run ended {state.get('name')}"
        fail(f"cannot import: {reason}", code=2)
    summary = {"path": row.detail.get("path"), **row.detail}
    return summary, _read_error_file(summary.get("error_file"))


def _read_error_file(path: str | None) -> list[dict]:
    if not path:
        return []
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _print_summary(summary: dict, errors: list[dict], shown: int = 20) -> None:
    table = Table(title=f"Import of {Path(summary['path']).name} ({summary['format']})",
                  title_justify="left")
    for column in ("rows", "created", "updated", "unchanged", "rejected"):
        table.add_column(column, justify="right")
    table.add_row(*(str(summary[c]) for c in ("rows", "created", "updated", "unchanged",
                                               "rejected")))
    console.print(table)
    console.print(f"devices: {summary['devices_created']} created, {summary['devices_updated']} "
                  f"updated; credentials: {summary['credentials_created']} created, "
                  f"{summary['credentials_updated']} updated", highlight=False)
    if summary.get("empty"):
        console.print("[yellow]the file has no data rows: nothing imported[/yellow]")
    if summary.get("ignored_columns"):
        console.print("ignored columns: " + ", ".join(summary["ignored_columns"]), highlight=False)
    if summary["rejected"]:
        console.print(f"[red]{summary['rejected']} rows rejected[/red]; all errors in "
                      f"{summary['error_file']}", highlight=False)
        table = Table(title=f"Rejected rows (first {min(shown, len(errors))} of {len(errors)} errors)",
                      title_justify="left")
        for column in ("row", "column", "reason"):
            table.add_column(column)
        for e in errors[:shown]:
            table.add_row(str(e["row"]), e["column"], e["reason"])
        console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``devices``, ``credentials`` and ``import`` to ``app``."""
    app.add_typer(devices_app, name="devices")
    app.add_typer(credentials_app, name="credentials")
    app.command("import")(import_)
