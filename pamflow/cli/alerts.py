"""CLI commands: ``pamflow alerts certificates|changes`` (certificates close to expiry and
the thresholds already alerted; robot configuration changes and their syslog state)."""

from __future__ import annotations

from datetime import timedelta

import typer
from rich.table import Table

from .common import console, fail, fmt, iso, json_line, parse_time

alerts_app = typer.Typer(help="Alerts and audit: certificates close to expiry (and the "
                              "alerts sent), robot configuration changes (and syslog).",
                         no_args_is_help=True)


@alerts_app.command("certificates")
def certificates(
    within: int = typer.Option(90, min=0, max=36500, help="Expiring within this many days "
                                                          "(expired ones included)."),
    tenant: str = typer.Option(None, help="Only this tenant's certificates."),
    limit: int = typer.Option(200, min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per certificate."),
) -> None:
    """Certificates (store and served on devices' TLS ports) by expiry, with the alert
    thresholds already sent."""
    from sqlmodel import col, select

    from pamflow import db
    from pamflow.alerts.certificates import days_left
    from pamflow.models import Certificate, CertificateAlert, Device, utcnow

    now = utcnow()
    with db.session() as s:
        query = (select(Certificate, Device)
                 .join(Device, col(Device.id) == col(Certificate.device_id), isouter=True)
                 .where(col(Certificate.not_after) <= now + timedelta(days=within))
                 .order_by(col(Certificate.not_after)).limit(limit))
        if tenant is not None:
            query = query.where(col(Certificate.tenant) == tenant)
        rows = list(s.exec(query))
        expiry = {c.id: c.not_after for c, _ in rows}
        sent: dict[int, list[int]] = {}
        for a in s.exec(select(CertificateAlert).where(col(CertificateAlert.certificate_id)
                                                       .in_(list(expiry)))):
            if a.not_after == expiry.get(a.certificate_id):  # alerts of the current expiry
                sent.setdefault(a.certificate_id, []).append(a.threshold_days)
    out = [{"id": c.id, "tenant": c.tenant, "source": c.source, "common_name": c.common_name,
            "device": d.name if d else None, "port": c.port, "issuer": c.issuer,
            "not_after": iso(c.not_after), "days_left": days_left(c.not_after, now),
            "alerts_sent": sorted(sent.get(c.id or 0, []), reverse=True)} for c, d in rows]
    if as_json:
        for row in out:
            json_line(row)
        return
    table = Table(title=f"Certificates expiring within {within} days ({len(out)})",
                  title_justify="left")
    for column in ("id", "tenant", "source", "common name", "device:port", "issuer",
                   "expires", "days", "alerts sent"):
        table.add_column(column)
    for r in out:
        where = f"{r['device']}:{r['port']}" if r["device"] and r["port"] else fmt(r["device"])
        table.add_row(str(r["id"]), fmt(r["tenant"]), fmt(r["source"]), fmt(r["common_name"]), where,
                      fmt(r["issuer"]), str(r["not_after"]), str(r["days_left"]),
                      fmt(r["alerts_sent"]))
    console.print(table, highlight=False)


@alerts_app.command("changes")
def changes(
    robot: str = typer.Option(None, help="Only this robot (deployment name)."),
    since: str = typer.Option(None, help="From this time on (ISO 8601, now, -1h, -7d)."),
    pending: bool = typer.Option(False, "--pending", help="Only changes syslog has not "
                                                          "received yet."),
    limit: int = typer.Option(100, min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per change."),
) -> None:
    """Changes of robots' schedules, instances and status seen by the configuration
    auditor, newest first."""
    from sqlmodel import col, select

    from pamflow import db
    from pamflow.models import ConfigChange, utcnow

    query = select(ConfigChange).order_by(col(ConfigChange.id).desc()).limit(limit)
    if robot is not None:
        query = query.where(col(ConfigChange.robot) == robot)
    if since:
        query = query.where(col(ConfigChange.at) >= parse_time(since, "--since", now=utcnow()))
    if pending:
        query = query.where(col(ConfigChange.syslog_state) == "pending")
    try:
        with db.session() as s:
            rows = list(s.exec(query))
    except Exception as exc:  # noqa: BLE001 - a store problem is one line, not a traceback
        fail(f"cannot read the configuration changes: {exc}", code=2)
    if as_json:
        for c in rows:
            json_line({"id": c.id, "at": iso(c.at), "robot": c.robot, "field": c.field,
                       "before": c.before, "after": c.after, "who": c.who, "source": c.source,
                       "syslog": c.syslog_state, "syslog_error": c.syslog_error})
        return
    table = Table(title=f"Robot configuration changes ({len(rows)}, newest first)",
                  title_justify="left")
    for column in ("id", "at (UTC)", "robot", "field", "before", "after", "who", "syslog"):
        table.add_column(column)
    for c in rows:
        table.add_row(str(c.id), c.at.strftime("%Y-%m-%d %H:%M:%S"), c.robot, c.field,
                      fmt(c.before), fmt(c.after), c.who or "unknown",
                      c.syslog_state + (f" ({c.syslog_error})" if c.syslog_error else ""))
    console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``alerts`` to ``app``."""
    app.add_typer(alerts_app, name="alerts")
