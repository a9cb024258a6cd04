"""The daily notification robots: Password change report (the day's password changes and
failures) and Expiration notification (passwords and certificates close to expiry).

Each queues one notification per tenant and period, marked in ``report_mark`` in the same
transaction, so a re-run (or a retried task) never sends a report twice. Nothing secret is
read: operations, credential names and dates only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select

from .. import audit, notifications
from ..models import (
    Certificate,
    Credential,
    Device,
    Operation,
    OperationKind,
    OperationState,
    ReportMark,
    SystemParameter,
    utcnow,
)

LIST_MAX = 200  # items named in one notification; the rest are counted
ERROR_MAX = 300
CHANGE_KINDS = (OperationKind.change.value, OperationKind.activate.value)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _mark(db: Session, kind: str, period: str, notification_id: int | None) -> bool:
    """Claim (kind, period); False when it was already sent."""
    if db.get(ReportMark, (kind, period)) is not None:
        return False
    db.add(ReportMark(kind=kind, period=period, notification_id=notification_id))
    return True


# ----------------------------------------------------------------- password change report
@dataclass(frozen=True)
class TenantChanges:
    """One tenant's password operations of the day."""

    tenant: str
    changed: int
    change_failed: int
    activated: int
    activation_failed: int
    notified: bool = False


@dataclass(frozen=True)
class ChangeFailure:
    tenant: str
    device: str
    account: str
    operation: str
    error: str
    at: str


@dataclass
class PasswordChangeReport:
    day: str
    tenants: list[TenantChanges] = field(default_factory=list)
    failures: list[ChangeFailure] = field(default_factory=list)


def change_report_text(day: str, tenant: TenantChanges,
                       failures: Sequence[ChangeFailure]) -> tuple[str, str]:
    """Subject and body of the "Password daily summary" notification (the template's job
    once the catalogue has templates)."""
    subject = (f"Password changes {day} (tenant {tenant.tenant}): {tenant.changed} changed, "
               f"{tenant.change_failed} failed")
    lines = [f"Password operations of {day} (UTC), tenant {tenant.tenant}:", "",
             f"- passwords changed: {tenant.changed}",
             f"- password changes failed: {tenant.change_failed}",
             f"- credentials activated: {tenant.activated}",
             f"- activations failed: {tenant.activation_failed}"]
    if failures:
        lines += ["", "Failures:"]
        lines += [f"- {f.account} on {f.device} ({f.operation}, {f.at}): {f.error}"
                  for f in failures[:LIST_MAX]]
        if len(failures) > LIST_MAX:
            lines.append(f"... and {len(failures) - LIST_MAX} more")
    return subject, "\n".join(lines)


def password_change_report(engine: Engine, day: date, tenant: str | None = None
                           ) -> PasswordChangeReport:
    """Summarise the change and activation operations finished on ``day`` (UTC) per tenant
    and queue a "Password daily summary" for each tenant that had any, once."""
    start, end = day_bounds(day)
    report = PasswordChangeReport(day=day.isoformat())
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failures: dict[str, list[ChangeFailure]] = defaultdict(list)
    with Session(engine) as db:
        query = (select(Operation, Credential, Device)
                 .join(Credential, col(Credential.id) == col(Operation.credential_id))
                 .join(Device, col(Device.id) == col(Credential.device_id))
                 .where(col(Operation.kind).in_(CHANGE_KINDS),
                        col(Operation.state).in_([OperationState.succeeded.value,
                                                  OperationState.failed.value]),
                        col(Operation.finished_at) >= start, col(Operation.finished_at) < end)
                 .order_by(col(Operation.finished_at), col(Operation.id)))
        if tenant is not None:
            query = query.where(col(Device.tenant) == tenant)
        for op, cred, dev in db.exec(query):
            ok = op.state == OperationState.succeeded.value
            key = ("changed" if ok else "change_failed") if op.kind == "change" else (
                "activated" if ok else "activation_failed")
            counts[dev.tenant][key] += 1
            if not ok:
                failures[dev.tenant].append(ChangeFailure(
                    tenant=dev.tenant, device=dev.name, account=cred.username,
                    operation=f"{op.kind} #{op.id}",
                    error=(op.error or "failed")[:ERROR_MAX],
                    at=(op.finished_at or end).isoformat()))
    for name in sorted(counts):
        c = counts[name]
        row = TenantChanges(name, c["changed"], c["change_failed"], c["activated"],
                            c["activation_failed"])
        subject, body = change_report_text(report.day, row, failures[name])
        with Session(engine) as db:
            try:
                if db.get(ReportMark, ("password-change-report", f"{report.day}/{name}")):
                    report.tenants.append(row)
                    continue
                note = notifications.queue(db, "Password daily summary", subject, body, {
                    "tenant": name, "day": report.day, "changed": row.changed,
                    "change_failed": row.change_failed, "activated": row.activated,
                    "activation_failed": row.activation_failed,
                    "failures": [f.__dict__ for f in failures[name][:LIST_MAX]]})
                db.flush()
                _mark(db, "password-change-report", f"{report.day}/{name}", note.id)
                audit.record(db, "robot:password-change-report", "report.queued", "report",
                             f"password-change-report/{report.day}/{name}",
                             {"changed": row.changed, "failed": row.change_failed})
                db.commit()
                row = TenantChanges(**{**row.__dict__, "notified": True})
            except sa.exc.IntegrityError:
                db.rollback()  # another run queued it meanwhile
        report.tenants.append(row)
        report.failures.extend(failures[name])
    return report


# ----------------------------------------------------------------- expiration notification
@dataclass(frozen=True)
class Expiring:
    """A password or certificate close to expiry."""

    tenant: str
    kind: str  # password | certificate
    name: str  # account@device, or certificate common name (on device:port)
    expires_at: str
    days_left: int


def _setting(db: Session, key: str, default: int) -> int:
    row = db.get(SystemParameter, key)
    try:
        return int(row.value) if row is not None else default
    except ValueError:
        return default


def expiration_text(day: str, tenant: str, items: Sequence[Expiring]) -> tuple[str, str]:
    """Subject and body of the "Expiration notification" (the template's job once the
    catalogue has templates)."""
    passwords = [i for i in items if i.kind == "password"]
    certs = [i for i in items if i.kind == "certificate"]
    subject = (f"Close to expiration (tenant {tenant}): {len(passwords)} password(s), "
               f"{len(certs)} certificate(s)")
    lines = [f"Passwords and certificates of tenant {tenant} close to expiration ({day}):"]
    for title, group in (("Passwords", passwords), ("Certificates", certs)):
        if group:
            lines += ["", f"{title}:"]
            lines += [f"- {i.name}: expires {i.expires_at} (in {i.days_left} day(s))"
                      for i in group[:LIST_MAX]]
            if len(group) > LIST_MAX:
                lines.append(f"... and {len(group) - LIST_MAX} more")
    return subject, "\n".join(lines)


@dataclass
class ExpirationReport:
    day: str
    password_days: int
    certificate_days: int
    items: list[Expiring] = field(default_factory=list)
    notified: list[str] = field(default_factory=list)  # tenants notified by this run


def expiration_notification(engine: Engine, now: datetime | None = None,
                            password_days: int | None = None,
                            certificate_days: int | None = None,
                            tenant: str | None = None) -> ExpirationReport:
    """Passwords whose expiry (``expires_at``, or last change + change interval) and
    certificates whose ``not_after`` fall within the next ``password_days`` /
    ``certificate_days`` (system parameters ``expiration_notification.password_days``,
    7, and ``expiration_notification.certificate_days``, 30); one "Expiration
    notification" per tenant and day, once."""
    now = now or utcnow()
    with Session(engine) as db:
        pdays = password_days if password_days is not None else _setting(
            db, "expiration_notification.password_days", 7)
        cdays = certificate_days if certificate_days is not None else _setting(
            db, "expiration_notification.certificate_days", 30)
        report = ExpirationReport(day=now.date().isoformat(), password_days=pdays,
                                  certificate_days=cdays)
        horizon = now + timedelta(days=pdays)
        query = (select(Credential, Device)
                 .join(Device, col(Device.id) == col(Credential.device_id))
                 .where(col(Device.active).is_(True),
                        or_(col(Credential.expires_at) <= horizon,
                            col(Credential.change_interval_days).is_not(None)))
                 .order_by(col(Credential.id)))
        if tenant is not None:
            query = query.where(col(Device.tenant) == tenant)
        for cred, dev in db.exec(query):
            due = cred.expires_at
            if cred.change_interval_days and cred.last_changed_at is not None:
                by_interval = cred.last_changed_at + timedelta(days=cred.change_interval_days)
                due = min(due, by_interval) if due else by_interval
            if due is None or not now < due <= horizon:
                continue
            report.items.append(Expiring(dev.tenant, "password", f"{cred.username}@{dev.name}",
                                         due.isoformat(), (due - now).days))
        chorizon = now + timedelta(days=cdays)
        cquery = (select(Certificate, Device)
                  .join(Device, col(Device.id) == col(Certificate.device_id), isouter=True)
                  .where(col(Certificate.not_after) > now,
                         col(Certificate.not_after) <= chorizon)
                  .order_by(col(Certificate.not_after)))
        if tenant is not None:
            cquery = cquery.where(col(Certificate.tenant) == tenant)
        for cert, cdev in db.exec(cquery):
            if cdev is not None and not cdev.active:
                continue
            where = f" on {cdev.name}:{cert.port}" if cdev and cert.port else (
                f" of {cdev.name}" if cdev else "")
            report.items.append(Expiring(cert.tenant, "certificate", cert.common_name + where,
                                         cert.not_after.isoformat(),
                                         (cert.not_after - now).days))
    by_tenant: dict[str, list[Expiring]] = defaultdict(list)
    for item in report.items:
        by_tenant[item.tenant].append(item)
    for name in sorted(by_tenant):
        items = by_tenant[name]
        period = f"{report.day}/{name}"
        subject, body = expiration_text(report.day, name, items)
        with Session(engine) as db:
            try:
                if db.get(ReportMark, ("expiration-notification", period)):
                    continue
                note = notifications.queue(db, "Expiration notification", subject, body, {
                    "tenant": name, "day": report.day,
                    "expiring_accounts": sum(i.kind == "password" for i in items),
                    "certificates": sum(i.kind == "certificate" for i in items),
                    "items": [i.__dict__ for i in items[:LIST_MAX]]})
                db.flush()
                _mark(db, "expiration-notification", period, note.id)
                audit.record(db, "robot:expiration-notification", "report.queued", "report",
                             f"expiration-notification/{period}", {"items": len(items)})
                db.commit()
                report.notified.append(name)
            except sa.exc.IntegrityError:
                db.rollback()
    return report
