"""CLI commands: ``devices``, ``credentials`` and ``import FILE``.

``devices pin-host-key`` (and ``devices add --host-key``) records a device's SSH host key
before the first connection, so the SSH target checks even the first one; ``devices
host-keys`` shows the keys recorded, pinned or first seen, with their fingerprints.

``credentials add`` reads the secret from a hidden prompt (or the first line of stdin when
stdin is not a terminal), never from the command line; ``credentials show`` prints the
secret only with ``--show-secret``, and records that it did in the audit log.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import col

console = Console()
err = Console(stderr=True)

devices_app = typer.Typer(help="Managed devices: add, list, show, host keys.",
                          no_args_is_help=True)
credentials_app = typer.Typer(help="Credentials on devices: add, list, show.", no_args_is_help=True)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "cli"


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]{message}[/red]", highlight=False)
    raise typer.Exit(code)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "—"
    return str(value)


def _find_device(s, ref: str, tenant: str | None):
    """A device by id, address or name (``tenant`` narrows); exits with a clear reason."""
    from sqlmodel import select

    from pamflow.inventory import normalize_address
    from pamflow.models import Device

    if ref.isdigit():
        dev = s.get(Device, int(ref))
        if dev is None:
            _fail(f"no device with id {ref}")
        return dev
    address = normalize_address(ref)
    matches = []
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
        _fail(f"no device {ref!r}" + (f" in tenant {tenant!r}" if tenant else ""))
    if len(matches) > 1:
        tenants = ", ".join(sorted({f"{d.tenant} (id {d.id})" for d in matches}))
        _fail(f"{ref!r} names several devices: {tenants}; give --tenant or the id")
    return matches[0]


def _row_errors(errors) -> None:
    for e in errors:
        err.print(f"[red]{e.column}: {e.reason}[/red]", highlight=False)
    raise typer.Exit(1)


# ---------------------------------------------------------------------------------------
# devices


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
    host_key: str = typer.Option(None, "--host-key",
                                 help='Pin its SSH host key now: "ssh-ed25519 AAAA..." or a '
                                      "known_hosts line."),
) -> None:
    """Register a device."""
    from sqlmodel import select

    from pamflow import audit, db, hostkeys, inventory
    from pamflow.models import Device

    try:
        tenant = inventory.check_tenant(tenant)
    except ValueError as exc:
        _fail(str(exc))
    cells = {"address": address, "name": name or "", "platform": platform, "ports": ports or "",
             "site": site or "", "tenant": tenant, "change_protocol": change_protocol or "",
             "external_id": external_id or ""}
    row = inventory.validate_row(0, cells, tenant)
    if isinstance(row, list):
        _row_errors(row)
    pinned = None
    if host_key is not None:  # checked before anything is written
        try:
            pinned = hostkeys.parse_host_key(host_key)
        except hostkeys.HostKeyError as exc:
            _fail(f"host_key: {exc}")
        protocol = hostkeys.protocol_of(row.device.get("platform"), row.device.get("change_protocol"))
        if protocol != "ssh":
            _fail(f"host_key: the device is changed over {protocol}, not SSH")
    engine = db.store()
    with db.session(engine) as s:
        existing = s.exec(select(Device).where(col(Device.tenant) == row.tenant,
                                               col(Device.address) == row.address)).first()
        if existing is not None:
            _fail(f"device {row.address} already exists in tenant {row.tenant} (id {existing.id})")
    out = inventory.write_rows([row], engine, source="manual", actor=_actor())
    if out.errors:
        _row_errors(out.errors)
    with db.session(engine) as s:
        dev = s.exec(select(Device).where(col(Device.tenant) == row.tenant,
                                          col(Device.address) == row.address)).one()
        audit.record(s, _actor(), "create", "device", dev.id,
                     {"address": dev.address, "tenant": dev.tenant, "platform": dev.platform})
        key_row = hostkeys.pin(s, dev, pinned, actor=_actor())[0] if pinned else None
        s.commit()
    console.print(f"device {dev.id} added: {dev.name} ({dev.address}, {dev.platform}, "
                  f"ports {_fmt(dev.ports)}, tenant {dev.tenant})", highlight=False)
    if key_row is not None:
        console.print(f"host key pinned: port {key_row.port} {key_row.key_type} "
                      f"{key_row.fingerprint}", highlight=False)


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
        dev = _find_device(s, device, tenant)
        try:
            row, replaced = hostkeys.pin(s, dev, key, port=port, actor=_actor())
        except hostkeys.HostKeyError as exc:
            _fail(f"cannot pin the host key of {dev.name}: {exc}")
        s.commit()
    console.print(f"pinned {row.key_type} {row.fingerprint} for device {dev.id} {dev.name} "
                  f"({dev.address}) port {row.port}", highlight=False)
    for old in replaced:
        console.print(f"replaced {old}", highlight=False)


@devices_app.command("host-keys")
def devices_host_keys(
    device: str = typer.Argument(..., help="Device id, address or name."),
    tenant: str = typer.Option(None),
) -> None:
    """The SSH host keys recorded for a device, with their fingerprints."""
    from pamflow import db, hostkeys

    engine = db.store()
    with db.session(engine) as s:
        dev = _find_device(s, device, tenant)
    keys = hostkeys.recorded_host_keys(engine, dev.id)
    table = Table(title=f"Host keys of {dev.name} ({dev.address}): {len(keys)}",
                  title_justify="left")
    for column in ("port", "type", "fingerprint", "recorded", "how"):
        table.add_column(column)
    for r in keys:
        table.add_row(str(r.key.port), r.key.key_type, r.key.fingerprint,
                      _fmt(r.key.first_seen_at),
                      f"pinned by {r.pinned_by}" if r.pinned_by else "first contact")
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
        counts = dict(s.exec(
            select(col(Credential.device_id), sa.func.count()).where(
                col(Credential.device_id).in_([d.id for d in devices])).group_by(col(Credential.device_id))
        ).all()) if devices else {}
    table = Table(title=f"Devices ({len(devices)} of {total})", title_justify="left")
    for column in ("id", "name", "address", "platform", "ports", "site", "tenant",
                   "connectivity", "credentials", "source"):
        table.add_column(column, justify="right" if column in ("id", "credentials") else "left")
    for d in devices:
        table.add_row(str(d.id), d.name, d.address, d.platform, _fmt(d.ports), _fmt(d.site),
                      d.tenant, d.connectivity, str(counts.get(d.id, 0)), d.source)
    console.print(table)


@devices_app.command("show")
def devices_show(
    device: str = typer.Argument(..., help="Device id, address or name."),
    tenant: str = typer.Option(None),
) -> None:
    """A device's details and its credentials (never their secrets)."""
    from sqlmodel import select

    from pamflow import db
    from pamflow.models import Credential

    with db.session() as s:
        dev = _find_device(s, device, tenant)
        creds = list(s.exec(select(Credential).where(col(Credential.device_id) == dev.id)
                            .order_by(col(Credential.username))))
    table = Table(show_header=False, title=f"Device {dev.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for field in ("name", "address", "platform", "ports", "site", "tenant", "source", "external_id",
                  "change_protocol", "maintenance_mode", "active", "connectivity",
                  "connectivity_detail", "last_seen_at", "last_checked_at", "created_at",
                  "updated_at"):
        table.add_row(field, _fmt(getattr(dev, field)))
    console.print(table)
    _print_credentials(creds, {dev.id: dev})


# ---------------------------------------------------------------------------------------
# credentials


def _read_secret() -> str:
    if sys.stdin.isatty():
        return typer.prompt("Secret", hide_input=True, confirmation_prompt=True)
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
        dev = _find_device(s, device, tenant)
        exists = s.exec(select(Credential).where(col(Credential.device_id) == dev.id,
                                                 col(Credential.username) == username.strip())).first()
        if exists is not None:
            _fail(f"credential {username}@{dev.address} already exists (id {exists.id})")
    if generate:
        from pamflow.passwords import PasswordPolicy

        secret = PasswordPolicy().generate()
    else:
        secret = _read_secret()
        if not secret:
            _fail("no secret given (type it at the prompt or pipe it on stdin)")
    cells = {"address": dev.address, "tenant": dev.tenant, "username": username, "secret": secret,
             "kind": kind, "change_interval_days": str(change_interval_days or ""),
             "policy": policy or ""}
    row = inventory.validate_row(0, cells, dev.tenant)
    if isinstance(row, list):
        _row_errors(row)
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


def _print_credentials(creds, devices: dict) -> None:
    table = Table(title=f"Credentials ({len(creds)})", title_justify="left")
    for column in ("id", "device", "username", "kind", "status", "version", "interval",
                   "last changed", "expires", "auto"):
        table.add_column(column,
                         justify="right" if column in ("id", "version", "interval") else "left")
    for c in creds:
        dev = devices.get(c.device_id)
        table.add_row(str(c.id), f"{dev.name} ({dev.address})" if dev else str(c.device_id),
                      c.username, c.kind, c.status, str(c.secret_version),
                      _fmt(c.change_interval_days), _fmt(c.last_changed_at), _fmt(c.expires_at),
                      "yes" if c.auto_change else "no")
    console.print(table)


@credentials_app.command("list")
def credentials_list(
    device: str = typer.Option(None, help="Only this device (id, address or name)."),
    tenant: str = typer.Option(None),
    status: str = typer.Option(None, help="ok, unverified, invalid or expired."),
    limit: int = typer.Option(200),
) -> None:
    """List credentials (never their secrets)."""
    from sqlmodel import select

    from pamflow import db
    from pamflow.models import Credential, Device

    with db.session() as s:
        query = select(Credential)
        if device:
            query = query.where(col(Credential.device_id) == _find_device(s, device, tenant).id)
        elif tenant:
            query = query.join(Device, col(Device.id) == col(Credential.device_id)).where(
                col(Device.tenant) == tenant)
        if status:
            query = query.where(col(Credential.status) == status)
        creds = list(s.exec(query.order_by(col(Credential.device_id), col(Credential.username)).limit(limit)))
        ids = {c.device_id for c in creds}
        devices = {d.id: d for d in s.exec(select(Device).where(col(Device.id).in_(ids)))} if ids else {}
    _print_credentials(creds, devices)


@credentials_app.command("show")
def credentials_show(
    credential: str = typer.Argument(..., help="Credential id, or a device (id, address, name)."),
    username: str = typer.Argument(None, help="The username, when a device is given."),
    tenant: str = typer.Option(None),
    show_secret: bool = typer.Option(False, "--show-secret",
                                     help="Print the decrypted secret (recorded in the audit log)."),
) -> None:
    """A credential's details; the secret only with --show-secret."""
    from sqlmodel import select

    from pamflow import audit, db
    from pamflow.models import Credential, Device
    from pamflow.vault import VaultError, credential_aad, vault

    box = vault() if show_secret else None
    with db.session() as s:
        if username is None:
            if not credential.isdigit():
                _fail("give a credential id, or a device and a username")
            cred = s.get(Credential, int(credential))
            if cred is None:
                _fail(f"no credential with id {credential}")
            dev = s.get(Device, cred.device_id)
        else:
            dev = _find_device(s, credential, tenant)
            cred = s.exec(select(Credential).where(col(Credential.device_id) == dev.id,
                                                   col(Credential.username) == username)).first()
            if cred is None:
                _fail(f"no credential {username!r} on {dev.name} ({dev.address})")
        secret_text = "********" if cred.secret else "— (none stored)"
        if show_secret and cred.secret:
            try:
                secret_text = box.decrypt(cred.secret, credential_aad(cred.id, cred.device_id,
                                                                      "secret"))
            except VaultError as exc:
                _fail(f"cannot decrypt the secret of {cred.username}@{dev.address}: {exc}")
            audit.record(s, _actor(), "secret_viewed", "credential", cred.id,
                         {"device_id": dev.id, "username": cred.username})
            s.commit()
    table = Table(show_header=False, title=f"Credential {cred.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("device", f"{dev.name} ({dev.address}, tenant {dev.tenant}, id {dev.id})")
    for field in ("username", "kind", "status", "status_detail", "secret_version", "policy",
                  "change_interval_days", "auto_change", "last_changed_at", "last_verified_at",
                  "expires_at", "created_at", "updated_at"):
        table.add_row(field, _fmt(getattr(cred, field)))
    table.add_row("change pending", "yes" if cred.pending_secret else "no")
    table.add_row("imported password waiting for a verify", "yes" if cred.candidate_secret else "no")
    table.add_row("secret", secret_text)
    console.print(table, highlight=False)


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
        _fail(f"cannot import: {exc}", code=2)
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
            _fail(f"cannot import: {exc}{hint}", code=2)
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
        _fail("--robot needs the Prefect API (start it with `pamflow up`, or set "
              "PREFECT_API_URL)", code=2)
    relative = os.path.relpath(path, base) if Path(path).is_relative_to(base) else str(path)
    started = utcnow()
    try:
        run = platform.run_deployment(api, ROBOT, {"path": relative, "tenant": tenant},
                                      timeout=timeout,
                                      on_state=lambda s: err.print(f"robot run: {s}"))
    except Exception as exc:  # noqa: BLE001 - no deployment, API refused: one line, exit 2
        _fail(f"cannot start the import robot: {exc.__class__.__name__}: {str(exc)[:200]}",
              code=2)
    state = run.get("state") or {}
    err.print(f"flow run {run['id']} ({run.get('name')}): {state.get('name')}", highlight=False)
    with db.session() as s:
        row = s.exec(select(AuditLog).where(
            col(AuditLog.entity) == "import_file", col(AuditLog.entity_id) == Path(path).name,
            col(AuditLog.at) >= started).order_by(sa.desc(col(AuditLog.id)))).first()
    if row is None or state.get("type") != "COMPLETED":
        reason = (row.detail.get("reason") if row is not None and row.action == "import_failed"
                  else (state.get("message") or "").splitlines()[0:1])
        if isinstance(reason, list):
            reason = reason[0] if reason else f"the run ended {state.get('name')}"
        _fail(f"cannot import: {reason}", code=2)
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
