"""Tenant clean (tenantcleanjob): fully delete the tenants soft-deleted more than the grace
period ago (two months by default), in batches, each batch audited.

A tenant's data is its devices and everything hanging from them (credentials and their
history, reservations, operations, host keys, certificates, sessions and their events),
its webhook sources and its archive files (its logs already moved to the warehouse). It is
deleted, not archived: credentials' ciphertexts are never copied into an archive. Children
go before their parents in bounded batches, one transaction each, so a clean killed midway
leaves a consistent store and the next run carries on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit
from ..models import (
    ArchiveBatch,
    Certificate,
    Credential,
    CredentialHistory,
    Device,
    HostKey,
    Operation,
    PasswordReservation,
    SessionEvent,
    Tenant,
    WebhookSource,
    table_of,
    utcnow,
)
from ..models import Session as ProxySession
from . import archive
from .settings import RetentionError, RetentionSettings

_D, _C = table_of(Device), table_of(Credential)
_S = table_of(ProxySession)


def _steps(tenant: str) -> list[tuple[str, sa.Table, sa.ColumnElement[bool]]]:
    """``(name, table, rows of the tenant)`` in the order they can be deleted."""
    devices = sa.select(_D.c.id).where(_D.c.tenant == tenant)
    creds = sa.select(_C.c.id).where(_C.c.device_id.in_(devices))
    sessions = sa.select(_S.c.id).where(_S.c.device_id.in_(devices))
    e, o = table_of(SessionEvent), table_of(Operation)
    r, h = table_of(PasswordReservation), table_of(CredentialHistory)
    k, c, w = table_of(HostKey), table_of(Certificate), table_of(WebhookSource)
    return [
        ("session_event", e, e.c.session_id.in_(sessions)),
        ("session", _S, _S.c.device_id.in_(devices)),
        ("operation", o, sa.or_(o.c.device_id.in_(devices), o.c.credential_id.in_(creds))),
        ("password_reservation", r, r.c.credential_id.in_(creds)),
        ("credential_history", h, h.c.credential_id.in_(creds)),
        ("credential", _C, _C.c.device_id.in_(devices)),
        ("host_key", k, k.c.device_id.in_(devices)),
        ("certificate", c, c.c.device_id.in_(devices)),
        ("device", _D, _D.c.tenant == tenant),
        ("webhook_source", w, w.c.tenant == tenant),
    ]


@dataclass
class TenantCleaned:
    tenant: str
    deleted_at: datetime
    rows: dict[str, int] = field(default_factory=dict)
    archive_files: int = 0
    finished: bool = False
    dry_run: bool = False


def due_tenants(db: Session, settings: RetentionSettings, now: datetime) -> list[Tenant]:
    cutoff = now - timedelta(days=settings.tenant_grace_days)
    return list(db.exec(select(Tenant).where(col(Tenant.deleted_at).is_not(None),
                                             col(Tenant.deleted_at) < cutoff,
                                             col(Tenant.cleaned_at).is_(None))
                        .order_by(col(Tenant.id))))


def clean_tenants(engine: Engine, settings: RetentionSettings, *, dry_run: bool = False,
                  now: datetime | None = None, actor: str = "robot:tenant-clean",
                  on_batch=None) -> list[TenantCleaned]:
    """Delete the data of every tenant due (see module doc); ``dry_run`` counts only."""
    now = now or utcnow()
    with Session(engine) as db:
        due = due_tenants(db, settings, now)
    out = []
    for t in due:
        if t.deleted_at is None:  # pragma: no cover - filtered above
            continue
        res = TenantCleaned(t.name, t.deleted_at, dry_run=dry_run)
        out.append(res)
        for name, table, where in _steps(t.name):
            res.rows[name] = 0
            if dry_run:
                with Session(engine) as db:
                    res.rows[name] = db.execute(sa.select(sa.func.count()).select_from(table)
                                                .where(where)).scalar_one()
                continue
            while True:
                with Session(engine) as db:
                    again = db.get(Tenant, t.id)
                    if again is None or again.deleted_at is None:
                        raise RetentionError(f"tenant {t.name!r} was restored while being "
                                             "cleaned: stopped")
                    ids = db.execute(sa.select(table.c.id).where(where).order_by(table.c.id)
                                     .limit(settings.batch_size)).scalars().all()
                    if not ids:
                        break
                    db.execute(sa.delete(table).where(table.c.id.in_(ids)))
                    audit.record(db, actor, "tenant.clean_batch", "tenant", t.name,
                                 {"table": name, "rows": len(ids)})
                    db.commit()
                res.rows[name] = res.rows.get(name, 0) + len(ids)
                if on_batch:
                    on_batch(res)
        if dry_run:
            continue
        res.archive_files = _drop_archives(engine, settings, t.name, now, actor)
        with Session(engine) as db:
            row = db.get(Tenant, t.id)
            if row is not None:
                row.cleaned_at = now
                db.add(row)
                audit.record(db, actor, "tenant.cleaned", "tenant", t.name,
                             {"rows": res.rows, "archive_files": res.archive_files,
                              "deleted_at": t.deleted_at.isoformat()})
                db.commit()
        res.finished = True
    return out


def _drop_archives(engine: Engine, settings: RetentionSettings, tenant: str, now: datetime,
                   actor: str) -> int:
    n = 0
    while True:
        with Session(engine) as db:
            rows = db.exec(select(ArchiveBatch).where(col(ArchiveBatch.tenant) == tenant,
                                                      col(ArchiveBatch.state) == "archived")
                           .limit(100)).all()
            if not rows:
                return n
            for b in rows:
                b.state, b.expired_at = "expired", now
                db.add(b)
            audit.record(db, actor, "tenant.archives_deleted", "tenant", tenant,
                         {"batches": [b.id for b in rows]})
            paths = [b.path for b in rows]
            db.commit()
        for rel in paths:
            archive.resolve(settings.archive_dir, rel).unlink(missing_ok=True)
        n += len(rows)


def check_tenant_name(name: str) -> str:
    """``name`` if it can be a tenant's name; else RetentionError saying why."""
    if not isinstance(name, str) or not name or len(name) > 255 \
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise RetentionError("a tenant name is 1-255 printable characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise RetentionError("a tenant name must be valid UTF-8 text") from None
    return name


def remove_tenant(engine: Engine, name: str, *, actor: str, now: datetime | None = None) -> Tenant:
    """Soft-delete tenant ``name`` (its data is deleted after the grace period)."""
    check_tenant_name(name)
    if name == "default":
        raise RetentionError("the default tenant cannot be removed")
    with Session(engine, expire_on_commit=False) as db:
        row = db.exec(select(Tenant).where(col(Tenant.name) == name)).first()
        known = db.exec(select(col(Device.id)).where(col(Device.tenant) == name).limit(1)).first()
        if row is None and known is None:
            raise RetentionError(f"no tenant named {name[:100]!r}")
        row = row or Tenant(name=name)
        if row.cleaned_at is not None:
            raise RetentionError(f"tenant {name[:100]!r} was already cleaned")
        if row.deleted_at is None:
            row.deleted_at, row.deleted_by = now or utcnow(), actor
            db.add(row)
            audit.record(db, actor, "tenant.removed", "tenant", name, {})
            db.commit()
        return row


def restore_tenant(engine: Engine, name: str, *, actor: str) -> Tenant:
    """Undo a soft delete before the tenant was cleaned."""
    check_tenant_name(name)
    with Session(engine, expire_on_commit=False) as db:
        row = db.exec(select(Tenant).where(col(Tenant.name) == name)).first()
        if row is None or row.deleted_at is None:
            raise RetentionError(f"tenant {name[:100]!r} is not removed")
        if row.cleaned_at is not None:
            raise RetentionError(f"tenant {name[:100]!r} was already cleaned: its data is gone")
        row.deleted_at = row.deleted_by = None
        db.add(row)
        audit.record(db, actor, "tenant.restored", "tenant", name, {})
        db.commit()
        return row
