"""Moving expired rows to the archive, purging the warehouse, conciliating both.

Every batch is one transaction: the expired rows are read (locked: ``FOR UPDATE`` on
PostgreSQL, the write lock on SQLite), written to an archive file that is on disk before
anything is deleted, then deleted with their dependent rows, the batch recorded
(``archive_batch``) and audited, and committed. A purge killed at any point therefore
leaves either the rows in the store (and perhaps an archive file no record names: an
orphan, removed by the next run) or the rows in a recorded archive file — never both,
never neither. Nothing is deleted that was not archived first.

The audit log is moved only by whole sealed blocks (:mod:`pamflow.audit_seal`), checked
against their seal first: the seal of the newest archived block is the chain's anchor, so
``pamflow audit verify`` keeps working, and the archived block can be checked against its
seal later (:func:`conciliate`). Unsealed audit rows are never moved, however old.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, faults
from ..audit_seal import GENESIS, SealError, verify_archive
from ..models import (
    ArchiveBatch,
    AuditLog,
    AuditSeal,
    Device,
    Notification,
    Operation,
    SessionEvent,
    Tenant,
    WebhookDelivery,
    table_of,
    utcnow,
)
from ..models import Session as ProxySession
from . import archive
from .settings import RetentionError, RetentionSettings

log = logging.getLogger(__name__)

_S, _E, _O = table_of(ProxySession), table_of(SessionEvent), table_of(Operation)
_N, _W, _A = table_of(Notification), table_of(WebhookDelivery), table_of(AuditLog)
_D, _B = table_of(Device), table_of(ArchiveBatch)

LOGS, DATA = "logs", "data"
AUDIT = "audit_log"


@dataclass(frozen=True)
class Dataset:
    """A kind of row that expires: its table, control date column, which rows may expire,
    the dependent rows archived with it, and whether it belongs to a tenant (via its device)."""

    name: str
    table: sa.Table
    control: str
    kind: str  # LOGS: per tenant (logretentiondays); DATA: platform-wide
    done: Callable[[sa.Table], Any]
    days: str  # the RetentionSettings field (DATA) — LOGS use log_days(tenant)
    children: tuple[tuple[sa.Table, str], ...] = ()


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("session", _S, "started_at", LOGS, lambda t: t.c.status != "active",
            "log_retention_days", ((_E, "session_id"),)),
    Dataset("operation", _O, "finished_at", LOGS,
            lambda t: t.c.state.in_(("succeeded", "failed", "cancelled")), "log_retention_days"),
    Dataset("notification", _N, "created_at", DATA, lambda t: t.c.state.in_(("sent", "failed")),
            "notification_days"),
    Dataset("webhook_delivery", _W, "received_at", DATA,
            lambda t: sa.or_(t.c.delivered_at.is_not(None), t.c.dead_at.is_not(None)),
            "webhook_delivery_days"),
)}
ALL_DATASETS = (*DATASETS, AUDIT)


@dataclass
class DatasetResult:
    """What one dataset (for one tenant) lost to the archive, or would (dry run)."""

    dataset: str
    tenant: str | None
    retention_days: int
    cutoff: datetime
    rows: int = 0
    child_rows: int = 0
    batches: int = 0
    kept_unsealed: int = 0  # audit rows past retention kept because no seal covers them
    dry_run: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat()
        return out


def tenant_names(db: Session) -> list[str]:
    """Every tenant the store knows: devices' tenants and the tenant table's."""
    names = set(db.exec(select(col(Device.tenant)).distinct()).all())
    names |= set(db.exec(select(col(Tenant.name))).all())
    names.add("default")
    return sorted(names)


def _tenant_filter(ds: Dataset, tenant: str | None) -> Any:
    if ds.kind != LOGS or tenant is None:
        return sa.true()
    devices = sa.select(_D.c.id).where(_D.c.tenant == tenant)
    inside = ds.table.c.device_id.in_(devices)
    return sa.or_(inside, ds.table.c.device_id.is_(None)) if tenant == "default" else inside


def _expired(ds: Dataset, tenant: str | None, cutoff: datetime) -> Any:
    t = ds.table
    return sa.and_(t.c[ds.control].is_not(None), t.c[ds.control] < cutoff, ds.done(t),
                   _tenant_filter(ds, tenant))


def _write_lock(db: Session) -> None:
    """Take the database's write lock first on SQLite (nothing changes under the batch)."""
    if db.get_bind().dialect.name == "sqlite":
        db.execute(sa.text("UPDATE archive_batch SET id = id WHERE 0"))


def _row(r: Any) -> dict:
    return dict(r._mapping)


def _record(db: Session, ds_name: str, tenant: str | None, cutoff: datetime, ids: list[int],
            child_rows: int, written: archive.Written, actor: str,
            seal_number: int | None = None) -> ArchiveBatch:
    batch = ArchiveBatch(dataset=ds_name, tenant=tenant, control_date=cutoff, first_id=ids[0],
                         last_id=ids[-1], rows=len(ids), child_rows=child_rows,
                         sha256=written.sha256, size=written.size, path=written.path,
                         seal_number=seal_number)
    db.add(batch)
    db.flush()
    audit.record(db, actor, "purge.archived", "archive_batch", batch.id,
                 {"dataset": ds_name, "tenant": tenant, "rows": len(ids),
                  "child_rows": child_rows, "first_id": ids[0], "last_id": ids[-1],
                  "control_date": cutoff.isoformat(), "sha256": written.sha256})
    return batch


def _fetch(db: Session, table: sa.Table, column: str, ids: list[int], pg: bool
           ) -> list[tuple[str, dict | str]]:
    """``(table, row)`` of the rows whose ``column`` is in ``ids``, by id. On PostgreSQL the
    server encodes each row (``row_to_json``): no decoding and re-encoding in Python."""
    if pg:
        texts = db.execute(sa.text(f"SELECT row_to_json(x)::text FROM {table.name} x "  # noqa: S608 - our table
                                   f"WHERE x.{column} = ANY(:ids) ORDER BY x.id"),
                           {"ids": ids}).scalars()
        return [(table.name, text) for text in texts]
    return [(table.name, _row(r)) for r in db.execute(
        sa.select(table).where(table.c[column].in_(ids)).order_by(table.c.id))]


def _delete(db: Session, table: sa.Table, column: str, ids: list[int], pg: bool) -> None:
    if pg:
        db.execute(sa.text(f"DELETE FROM {table.name} WHERE {column} = ANY(:ids)"),  # noqa: S608
                   {"ids": ids})
    else:
        db.execute(sa.delete(table).where(table.c[column].in_(ids)))


def _archive_one_batch(engine: Engine, ds: Dataset, tenant: str | None, cutoff: datetime,
                       settings: RetentionSettings, after_id: int, actor: str
                       ) -> tuple[int, int, int] | None:
    """Move the next batch (ids above ``after_id``); ``(rows, child rows, last id)`` or None."""
    t = ds.table
    with Session(engine) as db:
        pg = db.get_bind().dialect.name == "postgresql"
        _write_lock(db)
        query = (sa.select(t.c.id).where(_expired(ds, tenant, cutoff), t.c.id > after_id)
                 .order_by(t.c.id).limit(settings.batch_size))
        if pg:
            query = query.with_for_update(skip_locked=True)
        ids = list(db.execute(query).scalars())
        if not ids:
            return None
        rows = _fetch(db, t, "id", ids, pg)
        kids: list[tuple[str, dict | str]] = []
        for child, fk in ds.children:
            kids += _fetch(db, child, fk, ids, pg)
        written = archive.write(settings.archive_dir, ds.name, tenant, cutoff, ids[0], ids[-1],
                                rows + kids)
        faults.checkpoint("purge.archive_written")
        for child, fk in ds.children:
            _delete(db, child, fk, ids, pg)
        _delete(db, t, "id", ids, pg)
        _record(db, ds.name, tenant, cutoff, ids, len(kids), written, actor)
        faults.checkpoint("purge.rows_deleted")
        db.commit()
        faults.checkpoint("purge.batch_committed")
        return len(ids), len(kids), ids[-1]


def _count(engine: Engine, ds: Dataset, tenant: str | None, cutoff: datetime) -> tuple[int, int]:
    with Session(engine) as db:
        t = ds.table
        rows = db.execute(sa.select(sa.func.count()).select_from(t)
                          .where(_expired(ds, tenant, cutoff))).scalar_one()
        kids = 0
        for child, fk in ds.children:
            ids = sa.select(t.c.id).where(_expired(ds, tenant, cutoff))
            kids += db.execute(sa.select(sa.func.count()).select_from(child)
                               .where(child.c[fk].in_(ids))).scalar_one()
        return rows, kids


def _audit_blocks(db: Session, cutoff: datetime) -> Iterator[AuditSeal]:
    """Sealed, not yet archived audit blocks whose newest row is older than ``cutoff``."""
    for s in db.exec(select(AuditSeal).where(col(AuditSeal.archived_at).is_(None))
                     .order_by(col(AuditSeal.number))):
        newest = db.exec(select(sa.func.max(col(AuditLog.at))).where(
            col(AuditLog.id) > s.after_id, col(AuditLog.id) <= s.last_id)).first()
        if newest is None or newest >= cutoff:
            return
        yield s


def _archive_audit(engine: Engine, settings: RetentionSettings, cutoff: datetime,
                   dry_run: bool, actor: str, result: DatasetResult,
                   on_batch: Callable[[DatasetResult], None] | None) -> None:
    with Session(engine) as db:
        expired = db.execute(sa.select(sa.func.count()).select_from(_A)
                             .where(_A.c.at < cutoff)).scalar_one()
        blocks = list(_audit_blocks(db, cutoff))
    if dry_run:
        result.rows = sum(s.count for s in blocks)
        result.batches = len(blocks)
        result.kept_unsealed = max(0, expired - result.rows)
        return
    for s in blocks:
        with Session(engine) as db:
            audit._chain_head(db)  # the audit writers' lock
            current = db.get(AuditSeal, s.id)
            if current is None or current.archived_at is not None:
                continue
            prev = db.exec(select(AuditSeal).where(col(AuditSeal.number) == s.number - 1)).first()
            head = prev.head_hash if prev else GENESIS
            rows = [_row(r) for r in db.execute(sa.select(_A).where(
                _A.c.id > s.after_id, _A.c.id <= s.last_id).order_by(_A.c.id))]
            for r in rows:
                if r["prev_hash"] != head or audit._row_digest(head, _Obj(r)) != r["hash"]:
                    raise SealError(f"audit row {r['id']} (seal #{s.number}) does not hold: "
                                    "not archiving the audit log; run `pamflow audit verify`")
                head = r["hash"]
            if len(rows) != s.count or head != s.head_hash:
                raise SealError(f"seal #{s.number} does not hold ({len(rows)} rows, sealed "
                                f"{s.count}): not archiving the audit log; run `pamflow audit "
                                "verify`")
            ids = [r["id"] for r in rows]
            written = archive.write(settings.archive_dir, AUDIT, None, cutoff, ids[0], ids[-1],
                                    [(_A.name, r) for r in rows])
            db.execute(sa.delete(_A).where(_A.c.id.in_(ids)))
            current.archived_at = utcnow()
            db.add(current)
            _record(db, AUDIT, None, cutoff, ids, 0, written, actor, seal_number=s.number)
            db.commit()
        result.rows += len(ids)
        result.batches += 1
        if on_batch:
            on_batch(result)
    with Session(engine) as db:
        result.kept_unsealed = db.execute(sa.select(sa.func.count()).select_from(_A)
                                          .where(_A.c.at < cutoff)).scalar_one()


class _Obj:
    """Attribute access to a row dict (for the audit digest)."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)


def archive_expired(engine: Engine, settings: RetentionSettings, *,
                    datasets: tuple[str, ...] = ALL_DATASETS, tenant: str | None = None,
                    dry_run: bool = False, now: datetime | None = None,
                    actor: str = "robot:data-archiver",
                    on_batch: Callable[[DatasetResult], None] | None = None
                    ) -> list[DatasetResult]:
    """Move every expired row of ``datasets`` to the archive in batches (see module doc);
    logs per tenant (all tenants, or ``tenant``). ``dry_run``: count only, change nothing."""
    unknown = [d for d in datasets if d not in ALL_DATASETS]
    if unknown:
        raise RetentionError(f"unknown dataset(s) {', '.join(map(repr, unknown))}: known are "
                             f"{', '.join(ALL_DATASETS)}")
    now = now or utcnow()
    if not dry_run:
        remove_orphans(engine, settings)  # by wall-clock age, whatever the control date
    results: list[DatasetResult] = []
    with Session(engine) as db:
        all_tenants = tenant_names(db)
    if tenant is not None:
        from .tenants import check_tenant_name

        check_tenant_name(tenant)
    if tenant is not None and tenant not in all_tenants:
        raise RetentionError(f"no tenant named {tenant[:100]!r}")
    for name in datasets:
        if name == AUDIT:
            cutoff = now - timedelta(days=settings.audit_log_days)
            res = DatasetResult(AUDIT, None, settings.audit_log_days, cutoff, dry_run=dry_run)
            results.append(res)
            _archive_audit(engine, settings, cutoff, dry_run, actor, res, on_batch)
            continue
        ds = DATASETS[name]
        for who in ([tenant] if tenant else all_tenants) if ds.kind == LOGS else [None]:
            days = settings.log_days(who) if who is not None else getattr(settings, ds.days)
            cutoff = now - timedelta(days=days)
            res = DatasetResult(name, who, days, cutoff, dry_run=dry_run)
            results.append(res)
            if dry_run:
                res.rows, res.child_rows = _count(engine, ds, who, cutoff)
                res.batches = -(-res.rows // settings.batch_size)
                continue
            last = 0
            while True:
                done = _archive_one_batch(engine, ds, who, cutoff, settings, last, actor)
                if done is None:
                    break
                res.rows += done[0]
                res.child_rows += done[1]
                res.batches += 1
                last = done[2]
                if on_batch:
                    on_batch(res)
    return results


def expected_rows(engine: Engine, settings: RetentionSettings, datasets: tuple[str, ...],
                  now: datetime | None = None) -> int:
    """How many rows a run would move (for progress): a dry run's total."""
    return sum(r.rows for r in archive_expired(engine, settings, datasets=datasets,
                                               dry_run=True, now=now))


def remove_orphans(engine: Engine, settings: RetentionSettings,
                   now: datetime | None = None) -> list[str]:
    """Delete archive files that no ``archive_batch`` names (a batch whose transaction never
    committed: its rows are still in the store) once older than ``orphan_grace_s``, and
    left-over temporary files. Returns their archive-relative paths."""
    root = settings.archive_dir
    if not root.is_dir():
        return []
    now = now or utcnow()
    with Session(engine) as db:
        known = set(db.exec(select(col(ArchiveBatch.path))).all())
    removed = []
    for path in archive.files(root):
        rel = path.relative_to(root).as_posix()
        if rel in known:
            continue
        age = now.timestamp() - path.stat().st_mtime
        if age >= settings.orphan_grace_s:
            path.unlink(missing_ok=True)
            removed.append(rel)
            log.warning("removed orphan archive file %s (its batch never committed)", rel)
    return removed


@dataclass
class WarehouseResult:
    expired_batches: int = 0
    expired_rows: int = 0
    freed_bytes: int = 0
    missing_files: int = 0
    dry_run: bool = False


def purge_warehouse(engine: Engine, settings: RetentionSettings, *, dry_run: bool = False,
                    now: datetime | None = None, actor: str = "robot:warehouse-purge",
                    batch: int = 100) -> WarehouseResult:
    """Delete archive files past the warehouse retention (audit archives only when
    ``audit_warehouse_days`` is set); their records stay, marked ``expired``."""
    now = now or utcnow()
    out = WarehouseResult(dry_run=dry_run)
    rules = [(col(ArchiveBatch.dataset) != AUDIT, now - timedelta(days=settings.warehouse_days))]
    if settings.audit_warehouse_days:
        rules.append((col(ArchiveBatch.dataset) == AUDIT,
                      now - timedelta(days=settings.audit_warehouse_days)))
    for rule, cutoff in rules:
        last = 0
        while True:
            with Session(engine) as db:
                rows = db.exec(select(ArchiveBatch).where(
                    rule, col(ArchiveBatch.state) == "archived",
                    col(ArchiveBatch.created_at) < cutoff, col(ArchiveBatch.id) > last)
                    .order_by(col(ArchiveBatch.id)).limit(batch)).all()
                if not rows:
                    break
                last = rows[-1].id or last
                for b in rows:
                    out.expired_batches += 1
                    out.expired_rows += b.rows + b.child_rows
                    out.freed_bytes += b.size
                    if dry_run:
                        continue
                    path = archive.resolve(settings.archive_dir, b.path)
                    if not path.exists():
                        out.missing_files += 1
                    b.state, b.expired_at = "expired", now
                    db.add(b)
                if not dry_run:
                    audit.record(db, actor, "purge.warehouse_expired", "archive_batch",
                                 rows[-1].id, {"batches": [b.id for b in rows],
                                               "rows": sum(b.rows + b.child_rows for b in rows)})
                    paths = [b.path for b in rows]
                    db.commit()  # recorded first: a crash leaves files the next run deletes
                    for rel in paths:
                        archive.resolve(settings.archive_dir, rel).unlink(missing_ok=True)
    return out


@dataclass
class Discrepancy:
    batch_id: int | None
    path: str
    problem: str


@dataclass
class ConciliationResult:
    batches: int = 0
    rows: int = 0
    problems: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def conciliate(engine: Engine, settings: RetentionSettings, *, chunk: int = 1000,
               now: datetime | None = None) -> ConciliationResult:
    """Warehouse conciliation: every archived batch's file exists, has its recorded size and
    SHA-256 and holds its recorded rows, none of which is still in the store; an audit block
    still holds its seal; and every archive file is named by a batch (orphans are listed)."""
    out = ConciliationResult()
    root = settings.archive_dir
    seen: set[str] = set()
    last = 0
    while True:
        with Session(engine) as db:
            rows = db.exec(select(ArchiveBatch).where(col(ArchiveBatch.id) > last)
                           .order_by(col(ArchiveBatch.id)).limit(100)).all()
        if not rows:
            break
        last = rows[-1].id or last
        for b in rows:
            seen.add(b.path)
            if b.state != "archived":
                continue
            out.batches += 1
            problem = _check_batch(engine, settings, b, chunk)
            if problem:
                out.problems.append(Discrepancy(b.id, b.path, problem))
            else:
                out.rows += b.rows + b.child_rows
    if root.is_dir():
        now_ts = (now or utcnow()).timestamp()
        for path in archive.files(root):
            rel = path.relative_to(root).as_posix()
            if rel not in seen and now_ts - path.stat().st_mtime >= settings.orphan_grace_s:
                out.problems.append(Discrepancy(None, rel, "no archive record names this file"))
    return out


def _check_batch(engine: Engine, settings: RetentionSettings, b: ArchiveBatch,
                 chunk: int) -> str | None:
    try:
        path = archive.resolve(settings.archive_dir, b.path)
    except RetentionError as exc:
        return str(exc)
    if not path.is_file():
        return "the archive file is missing"
    digest, size = archive.checksum(path)
    if size != b.size or digest != b.sha256:
        return "the archive file's checksum differs from its record: it was changed"
    table = DATASETS[b.dataset].table if b.dataset in DATASETS else _A
    own = kids = 0
    ids: list[int] = []
    try:
        for name, row in archive.read(path):
            if name == table.name:
                own += 1
                ids.append(int(row["id"]))
            else:
                kids += 1
    except (OSError, ValueError, KeyError) as exc:
        return f"the archive file cannot be read: {type(exc).__name__}"
    if own != b.rows or kids != b.child_rows:
        return f"the archive holds {own}+{kids} rows; its record says {b.rows}+{b.child_rows}"
    with Session(engine) as db:
        for i in range(0, len(ids), chunk):
            still = db.execute(sa.select(sa.func.count()).select_from(table)
                               .where(table.c.id.in_(ids[i:i + chunk]))).scalar_one()
            if still:
                return f"{still} archived row(s) are still in the store (archived twice?)"
        if b.dataset == AUDIT and b.seal_number is not None:
            seal = db.exec(select(AuditSeal).where(col(AuditSeal.number) == b.seal_number)).first()
            prev = db.exec(select(AuditSeal).where(col(AuditSeal.number) == b.seal_number - 1)
                           ).first()
            if seal is None:
                return f"seal #{b.seal_number} of this audit block is missing"
            wrong = verify_archive(path, seal, prev.head_hash if prev else GENESIS)
            if wrong:
                return wrong
    return None


@dataclass
class IdleClosed:
    session_id: int
    user_id: int | None
    device_id: int | None
    idle_since: datetime


def close_idle_sessions(engine: Engine, settings: RetentionSettings, *,
                        now: datetime | None = None, actor: str = "robot:idle-session-deletion"
                        ) -> list[IdleClosed]:
    """Close active sessions idle past ``idle_session_minutes`` (idlesessiondeletion): status
    finished, ended now, reason "idle timeout"; in batches, each audited."""
    now = now or utcnow()
    cutoff = now - timedelta(minutes=settings.idle_session_minutes)
    idle_since = sa.func.coalesce(_S.c.last_activity_at, _S.c.started_at)
    closed: list[IdleClosed] = []
    while True:
        with Session(engine) as db:
            _write_lock(db)
            query = (sa.select(_S.c.id, _S.c.user_id, _S.c.device_id, idle_since.label("idle"))
                     .where(_S.c.status == "active", idle_since < cutoff)
                     .order_by(_S.c.id).limit(settings.batch_size))
            if db.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = db.execute(query).all()
            if not rows:
                break
            ids = [r.id for r in rows]
            db.execute(sa.update(_S).where(_S.c.id.in_(ids), _S.c.status == "active")
                       .values(status="finished", ended_at=now, end_reason="idle timeout"))
            audit.record(db, actor, "session.closed_idle", "session", None,
                         {"sessions": ids, "idle_minutes": settings.idle_session_minutes})
            db.commit()
        closed += [IdleClosed(r.id, r.user_id, r.device_id, r.idle) for r in rows]
    return closed
