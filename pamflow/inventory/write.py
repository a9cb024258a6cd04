"""Writing validated rows: one transaction per chunk (row by row when a chunk fails),
only real differences, secrets sealed for their row; the import's audit record,
notification and error file."""


from __future__ import annotations

import csv
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from ..hostkeys import ParsedHostKey, protocol_of, ssh_port
from ..models import Credential, CredentialStatus, Device, HostKey, utcnow
from ..vault import Vault, VaultError, credential_aad, vault
from .files import (
    errors_dir,
)
from .model import (
    _QUERY_BATCH,
    CHUNK_SIZE,
    EXTRA_DEVICE_FIELDS,
    PLATFORMS,
    ROLE_FIELDS,
    SETTING_FIELDS,
    ChunkOutcome,
    ImportResult,
    ImportRow,
    RowError,
    Secret,
    Sheet,
)
from .validate import (
    read_sheet,
)

# ---------------------------------------------------------------------------------------
# writing

_DEVICE: sa.Table = SQLModel.metadata.tables[Device.__tablename__]
_CREDENTIAL: sa.Table = SQLModel.metadata.tables[Credential.__tablename__]
_HOST_KEY: sa.Table = SQLModel.metadata.tables[HostKey.__tablename__]


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _preload(conn: Connection, rows: Iterable[ImportRow], extras: bool = False
             ) -> tuple[dict, dict]:
    """The stored devices and credentials for these rows' keys, in a few queries (with
    ``extras``, the devices' settings, maintenance mode and admin/reconcile accounts too)."""
    by_tenant: dict[str, set[str]] = {}
    for r in rows:
        by_tenant.setdefault(r.tenant, set()).add(r.address)
    d = _DEVICE.c
    devices: dict[tuple[str, str], Any] = {}
    columns: tuple[Any, ...] = (d.id, d.tenant, d.address, d.name, d.platform, d.ports, d.site,
                                d.change_protocol, d.external_id)
    if extras:
        columns += (d.settings, d.maintenance_mode, d.admin_credential_id,
                    d.reconcile_credential_id)
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
    process = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    if dialect.name == "sqlite" and process is not None:
        text = process(when.astimezone(UTC))
    else:
        text = when.astimezone(UTC).isoformat()
    return f"'{text}'"


def _now_sql(conn: Connection, now: datetime) -> Any:
    return sa.literal_column(_sql_time(conn, now))


def _new_device(r: ImportRow, source: str, plan: _DevicePlan | None = None) -> dict[str, Any]:
    """A new device's varying columns (the constant ones are inlined in the INSERT; a
    device with settings or a maintenance mode gives those too)."""
    platform = r.device.get("platform", "linux")
    values = {
        "name": r.device.get("name", r.address), "address": r.address, "platform": platform,
        "ports": r.device.get("ports") or list(PLATFORMS[platform]), "site": r.device.get("site"),
        "tenant": r.tenant, "source": source, "external_id": r.device.get("external_id"),
        "change_protocol": r.device.get("change_protocol"),
    }
    if plan is not None and (plan.settings is not None or "maintenance_mode" in r.device):
        values["settings"] = plan.settings or {}
        values["maintenance_mode"] = bool(r.device.get("maintenance_mode", False))
    return values


_COLUMNS = frozenset(("name", "platform", "ports", "site", "change_protocol", "external_id",
                      "maintenance_mode"))
_EXTRAS = frozenset(EXTRA_DEVICE_FIELDS)
_ROLE_COLUMNS = {"admin_username": "admin_credential_id",
                 "reconcile_username": "reconcile_credential_id"}


def _device_changes(r: ImportRow, stored: Any) -> dict[str, Any]:
    return {f: v for f, v in r.device.items() if f in _COLUMNS and getattr(stored, f) != v}


class _DevicePlan:
    """What a device's extra fields (accounts, settings, host key) ask of the writer.

    ``refused``: field -> reason, for the rows that gave that field; ``settings``: the
    device's new settings (None: unchanged); ``roles``: role column -> the credential id
    known now; ``later``: role column -> the username of a credential this import creates
    (its id is read once it is written); ``pin``: the host key to pin (None: nothing to do).
    """

    __slots__ = ("later", "pin", "refused", "roles", "settings")

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}
        self.settings: dict[str, Any] | None = None
        self.roles: dict[str, int] = {}
        self.later: dict[str, str] = {}
        self.pin: ParsedHostKey | None = None

    def changes(self) -> dict[str, Any]:
        """Device columns to update now (stored devices)."""
        out: dict[str, Any] = dict(self.roles)
        if self.settings is not None:
            out["settings"] = self.settings
        return out

    @property
    def touches(self) -> bool:
        return bool(self.settings is not None or self.roles or self.later or self.pin)


class _Where:
    """The fields ``hostkeys.ssh_port`` reads, for a device not (yet) in this shape."""

    __slots__ = ("ports", "settings")

    def __init__(self, ports: list[int], settings: dict[str, Any]) -> None:
        self.ports, self.settings = ports, settings


def _plan_device(r: ImportRow, stored: Any, credentials: dict, host_keys: dict) -> _DevicePlan:
    """Check a device's extra fields against what is stored (see :class:`_DevicePlan`)."""
    plan = _DevicePlan()
    dev = r.device
    protocol = protocol_of(dev.get("platform") or (stored.platform if stored is not None else None),
                           dev.get("change_protocol") or (stored.change_protocol if stored is not None
                                                          else None))
    for field in ("sudo", "host_key"):
        if field in dev and protocol != "ssh":
            plan.refused[field] = (f"{field} applies to devices changed over SSH; {r.address} is "
                                   f"changed over {protocol}")
    for role in ROLE_FIELDS:
        username = dev.get(role)
        if username is None:
            continue
        column = _ROLE_COLUMNS[role]
        cred = credentials.get((stored.id, username)) if stored is not None else None
        if cred is not None:
            if stored is None or getattr(stored, column) != cred.id:
                plan.roles[column] = cred.id
        elif username in r.defined:
            plan.later[column] = username
        else:
            what = "admin" if role == "admin_username" else "reconcile"
            plan.refused[role] = (f"{role}: {username!r} is not an account of device {r.address}; "
                                  f"add the {what} account first, or give it a row of its own in "
                                  "this file")
    stored_settings = dict(stored.settings or {}) if stored is not None else {}
    given = {key: dev[f] for f, key in SETTING_FIELDS.items() if f in dev and f not in plan.refused}
    merged = {**stored_settings, **given}
    if given and merged != stored_settings:
        plan.settings = merged
    key = dev.get("host_key")
    if key is not None and "host_key" not in plan.refused:
        ports = dev.get("ports") or (list(stored.ports or []) if stored is not None
                                     else list(PLATFORMS[dev.get("platform", "linux")]))
        port = key.port if key.port is not None else ssh_port(_Where(ports, merged))
        recorded = host_keys.get((stored.id, port), set()) if stored is not None else set()
        if recorded != {(key.key_type, key.key_base64)}:
            plan.pin = key
    return plan


def _plan_devices(conn: Connection, rows: Sequence[ImportRow], devices: dict, credentials: dict
                  ) -> dict[tuple[str, str], _DevicePlan]:
    """A plan per device of ``rows`` that has extra fields."""
    wanted = {}
    for r in rows:
        if r.device_key not in wanted and not r.device.keys().isdisjoint(_EXTRAS):
            wanted[r.device_key] = r
    host_keys: dict[tuple[int, int], set[tuple[str, str]]] = {}
    ids = sorted(devices[k].id for k, r in wanted.items() if "host_key" in r.device and k in devices)
    h = _HOST_KEY.c
    for batch in _batched(ids, _QUERY_BATCH):
        for rec in conn.execute(sa.select(h.device_id, h.port, h.key_type, h.key_base64)
                                .where(h.device_id.in_(batch))):
            host_keys.setdefault((rec.device_id, rec.port), set()).add((rec.key_type, rec.key_base64))
    return {k: _plan_device(r, devices.get(k), credentials, host_keys) for k, r in wanted.items()}


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


def _revealed(secret: Secret | None) -> str:
    """The secret of a row in a group that has one (grouped by ``_new_credential``)."""
    if secret is None:
        raise ValueError("a credential grouped as having a secret has none")
    return secret.reveal()


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
                (cid, box.encrypt(_revealed(secret), credential_aad(cid, values[0], "secret")),
                 *values)
                for cid, (values, secret) in zip(ids, items, strict=True)])
        else:
            for batch in _batched(items, _ROWS_PER_INSERT):
                result = conn.exec_driver_sql(
                    insert + ", ".join([one] * len(batch)) + " RETURNING id, device_id, username",
                    tuple(v for values, _secret in batch for v in values))
                by_key = {(values[0], values[1]): secret for values, secret in batch}
                for cid, device_id, username in result:
                    secret = by_key[(device_id, username)]
                    sealed.append((box.encrypt(_revealed(secret), credential_aad(cid, device_id,
                                                                                 "secret")), cid))
    if sealed:
        conn.exec_driver_sql(f"UPDATE credential SET secret = {mark} WHERE id = {mark}", sealed)


def _write(conn: Connection, rows: Sequence[ImportRow], source: str, box: Vault,
           actor: str = "batch-import") -> ChunkOutcome:
    """Plan and write ``rows`` on ``conn`` (inside the caller's transaction)."""
    now = utcnow()
    out = ChunkOutcome()
    extras = any(not r.device.keys().isdisjoint(_EXTRAS) for r in rows)
    devices, credentials = _preload(conn, rows, extras)
    plans = _plan_devices(conn, rows, devices, credentials) if extras else {}
    new_devices: dict[tuple[str, str], dict] = {}
    device_updates: dict[int, dict] = {}
    new_credentials: list[tuple[tuple[str, str] | int, tuple, tuple, Secret | None]] = []
    credential_updates: list[dict] = []
    for r in rows:
        key = r.device_key
        stored = devices.get(key)
        plan = plans.get(key) if extras else None
        if plan is not None and plan.refused:
            refused = next((f for f in r.extras_given if f in plan.refused), None)
            if refused is not None:  # the row asked for it: the whole row is refused
                out.errors.append(RowError(r.row, refused, plan.refused[refused]))
                continue
        creates_device = updates_device = False
        device_update = None
        if stored is None:
            creates_device = key not in new_devices
        elif stored.id not in device_updates:
            changes = _device_changes(r, stored)
            if plan is not None:
                changes.update(plan.changes())
            if changes or (plan is not None and plan.touches):
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
            new_devices[key] = _new_device(r, source, plan)
            out.devices_created += 1
        if stored is not None and device_update is not None:
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
        plain = [v for v in new_devices.values() if "settings" not in v]
        configured = [v for v in new_devices.values() if "settings" in v]
        defaults: dict[str, Any] = {"maintenance_mode": sa.false(),
                                    "settings": sa.literal_column("'{}'")}
        for batch, constants in ((plain, defaults), (configured, {})):
            if not batch:
                continue
            stmt = _DEVICE.insert().values(
                active=sa.true(), connectivity=sa.literal_column("'unknown'"), created_at=now_sql,
                updated_at=now_sql, **constants,
            ).returning(d.id, d.tenant, d.address)  # mapped by key: any order will do
            ids.update({(rec.tenant, rec.address): rec.id for rec in conn.execute(stmt, batch)})
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
    if plans:
        _finish_devices(conn, plans, devices, ids, now, actor)
    return out


def _finish_devices(conn: Connection, plans: dict[tuple[str, str], _DevicePlan], devices: dict,
                    ids: dict[tuple[str, str], int], now: datetime, actor: str) -> None:
    """Once the chunk's devices and credentials exist: point devices at their admin and
    reconcile accounts (new devices, and accounts this chunk created), then pin host keys
    (as ``hostkeys.pin`` does, audited). An account defined by a row of a later chunk is
    linked when that chunk is written (its rows carry the device's fields too)."""
    from sqlmodel import Session

    from ..hostkeys import pin

    def device_id(key: tuple[str, str]) -> int | None:
        stored = devices.get(key)
        return stored.id if stored is not None else ids.get(key)

    roles: dict[int, dict[str, Any]] = {}
    wanted: dict[int, dict[str, str]] = {}
    for key, plan in plans.items():
        dev_id = device_id(key)
        if dev_id is None:  # every row of the device was refused
            continue
        if key not in devices and plan.roles:
            roles.setdefault(dev_id, {}).update(plan.roles)
        if plan.later:
            wanted[dev_id] = plan.later
    c = _CREDENTIAL.c
    for batch in _batched(sorted(wanted), _QUERY_BATCH):
        for rec in conn.execute(sa.select(c.id, c.device_id, c.username).where(c.device_id.in_(batch))):
            for column, username in wanted[rec.device_id].items():
                if rec.username == username:
                    roles.setdefault(rec.device_id, {})[column] = rec.id
    if roles:
        _update_grouped(conn, _DEVICE, [{"b_id": dev_id, "updated_at": now, **values}
                                        for dev_id, values in roles.items()])
    pins = [(device_id(key), plan.pin) for key, plan in plans.items() if plan.pin is not None]
    if any(dev_id is not None for dev_id, _parsed in pins):
        with Session(bind=conn) as db:
            for dev_id, parsed in pins:
                device = db.get(Device, dev_id) if dev_id is not None else None
                if device is not None and parsed is not None:
                    pin(db, device, parsed, actor=actor)
            db.flush()


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
    from .. import db

    engine = engine or db.store()
    box = box or vault()
    if not rows:
        return ChunkOutcome()
    try:
        with engine.begin() as conn:
            out = _write(conn, rows, source, box, actor)
    except sa.exc.DBAPIError:
        out = ChunkOutcome(isolated=True)
        for r in rows:
            try:
                with engine.begin() as conn:
                    out.add(_write(conn, [r], source, box, actor))
            except sa.exc.DBAPIError as exc:
                out.errors.append(RowError(r.row, "-", _store_reason(exc)))
    _queue_verifies(engine, out.verify_ids, actor)
    return out


def _queue_verifies(engine: Engine, credential_ids: list[int], actor: str) -> None:
    """A verify per candidate secret. Should this fail, the candidate still waits: any later
    verify of the credential (the password check robot's) tries it."""
    if not credential_ids:
        return
    from ..operations import queue

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
    from .. import audit, db, notifications

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
        notifications.queue(s, "Batch import finished", context={
            "file": name, **figures})
        s.commit()
    return result


def record_failed_import(path: str | Path, reason: str, engine: Engine | None = None,
                         actor: str = "batch-import", tenant: str | None = None) -> None:
    """Audit and notify an import whose file was refused as a whole (nothing was written)."""
    from .. import audit, db, notifications

    shown = os.fspath(path).replace("\x00", "\\x00")[:4096]  # no NUL into text columns
    name = Path(shown).name[:200] or "(no name)"
    with db.session(engine) as s:
        audit.record(s, actor, "import_failed", "import_file", name,
                     {"path": shown, "tenant": tenant, "reason": reason})
        notifications.queue(s, "Batch import finished", context={
            "file": name, "failed": True, "reason": reason, "tenant": tenant or "default"})
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
