"""CLI command: ``pamflow monitors status`` (what the system monitors last saw)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .common import actor, console, fail, find_device, iso, json_line, parse_time

monitors_app = typer.Typer(help="The system monitors: the state each one keeps (CPU and "
                                "memory episodes, disk levels, services and listeners, keys, "
                                "backup, schedule problems).", no_args_is_help=True)


def _summary(key: str, state: dict) -> str:
    if key == "usage":
        episodes = state.get("episodes") or {}
        return ", ".join(f"{metric} {e.get('level', 'normal')}"
                         for metric, e in sorted(episodes.items())) or "no episode"
    if "state" in state:
        return str(state["state"]) + (f" ({state['detail']})" if state.get("detail") else "")
    if "level" in state:
        shown = {k: v for k, v in state.items() if k not in ("host",)}
        return json.dumps(shown, default=str)[:120]
    return json.dumps(state, default=str)[:120]


@monitors_app.command("status")
def status(
    prefix: str = typer.Option("", help="Only keys starting with this (usage, disk:, service:, "
                                        "listener:, pk:, backup, schedule:)."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per key."),
) -> None:
    """The state every monitor keeps, by key (it never holds a secret)."""
    from pamflow import db
    from pamflow.models import MonitorState

    if len(prefix) > 300 or "\x00" in prefix:
        fail("--prefix: at most 300 characters, no NUL", code=2)
    from pamflow.monitors.state import keys

    with db.session() as s:
        rows = [s.get(MonitorState, key) for key in keys(s, prefix)]
    found = [r for r in rows if r is not None]
    if as_json:
        for r in found:
            state = dict(r.state)
            if r.key == "usage":  # the samples are long and internal
                state = {"episodes": state.get("episodes") or {}}
            json_line({"key": r.key, "updated_at": iso(r.updated_at), "state": state})
        return
    table = Table(title=f"System monitors ({len(found)} keys)", title_justify="left")
    for column in ("key", "updated (UTC)", "state"):
        table.add_column(column)
    for r in found:
        table.add_row(r.key, r.updated_at.strftime("%Y-%m-%d %H:%M:%S"), _summary(r.key, r.state))
    console.print(table, highlight=False)


@monitors_app.command("alarm-define")
def alarm_define(
    name: str = typer.Argument(..., help="The alarm's name (unique)."),
    metric: str = typer.Option(..., help="cpu_percent, memory_percent or "
                                         "disk_free_percent:/<mount> (a configured mount)."),
    condition: str = typer.Option(">", help="> >= < <= against the threshold."),
    threshold: float = typer.Option(..., help="A percentage."),
    duration: int = typer.Option(600, help="Seconds the condition must hold."),
    severity: str = typer.Option("high", help="low, medium, high or critical."),
    as_json: bool = typer.Option(False, "--json", help="The definition as JSON."),
) -> None:
    """Add an alarm definition: the system monitor opens an alarm when it holds."""
    from pamflow import db
    from pamflow.monitors.alarms import AlarmError, define

    try:
        with db.session() as s:
            row = define(s, name, metric, condition, threshold, duration, severity, actor())
            s.commit()
            out = {"id": row.id, "name": row.name, "metric": row.metric,
                   "condition": row.condition, "threshold": row.threshold,
                   "duration_seconds": row.duration_seconds, "severity": row.severity}
    except AlarmError as exc:
        fail(str(exc), code=2)
    if as_json:
        json_line(out)
    else:
        typer.echo(f"alarm definition {out['id']} {name}: {metric} {condition} {threshold:g} "
                   f"for {duration} s, {severity}")


@monitors_app.command("alarms")
def alarms(
    open_only: bool = typer.Option(False, "--open", help="Only open alarms."),
    limit: int = typer.Option(100, min=1, max=10_000, help="Newest first, at most this many."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per alarm."),
) -> None:
    """Alarms, newest first."""
    from sqlmodel import col, select

    from pamflow import db
    from pamflow.models import Alarm

    with db.session() as s:
        query = select(Alarm).order_by(col(Alarm.id).desc()).limit(limit)
        if open_only:
            query = query.where(Alarm.state == "open")
        rows = list(s.exec(query))
    if as_json:
        for r in rows:
            json_line({"id": r.id, "name": r.name, "metric": r.metric, "severity": r.severity,
                       "state": r.state, "opened_at": iso(r.opened_at),
                       "closed_at": iso(r.closed_at), "value": r.value, "last_value": r.last_value})
        return
    table = Table(title=f"Alarms ({len(rows)}, newest first)", title_justify="left")
    for column in ("id", "name", "metric", "severity", "state", "opened (UTC)", "value", "last"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r.id), r.name, r.metric, r.severity, r.state,
                      r.opened_at.strftime("%Y-%m-%d %H:%M:%S"), f"{r.value:.1f}",
                      f"{r.last_value:.1f}")
    console.print(table, highlight=False)


@monitors_app.command("maintenance-add")
def maintenance_add(
    device: str = typer.Argument(..., help="The device: id, address or name."),
    start: str = typer.Option(..., help="When it enters maintenance (now, +2h, ISO 8601)."),
    end: str = typer.Option(..., help="When it leaves (+4h, ISO 8601; relative to --start)."),
    reason: str = typer.Option("", help="Why (one line, at most 200 characters)."),
    tenant: str = typer.Option(None, help="The device's tenant, when the name is ambiguous."),
    as_json: bool = typer.Option(False, "--json", help="The window as JSON."),
) -> None:
    """Add a maintenance window: the maintenance mode check puts the device in maintenance
    mode from --start to --end (robots skip it meanwhile)."""
    from pamflow import db
    from pamflow.models import utcnow
    from pamflow.monitors.maintenance import MaintenanceError, add_window

    now = utcnow()
    starts = parse_time(start, "--start", now=now)
    ends = parse_time(end, "--end", now=now, base=starts)
    try:
        with db.session() as s:
            dev = find_device(s, device, tenant)
            window = add_window(s, dev, starts, ends, reason, actor())
            s.commit()
            out = {"id": window.id, "device_id": dev.id, "device": dev.name,
                   "starts_at": iso(starts), "ends_at": iso(ends), "reason": reason}
    except MaintenanceError as exc:
        fail(str(exc), code=2)
    if as_json:
        json_line(out)
    else:
        typer.echo(f"maintenance window {out['id']}: {out['device']} from {out['starts_at']} "
                   f"to {out['ends_at']}")


@monitors_app.command("maintenance-list")
def maintenance_list(
    current: bool = typer.Option(False, "--current", help="Only windows not yet ended."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per window."),
) -> None:
    """Maintenance windows, by start."""
    from sqlmodel import col, select

    from pamflow import db
    from pamflow.models import Device, MaintenanceWindow, utcnow

    with db.session() as s:
        query = select(MaintenanceWindow, Device).where(
            MaintenanceWindow.device_id == Device.id).order_by(col(MaintenanceWindow.starts_at))
        if current:
            query = query.where(col(MaintenanceWindow.ends_at) > utcnow())
        rows = list(s.exec(query))
    if as_json:
        for w, d in rows:
            json_line({"id": w.id, "device_id": d.id, "device": d.name, "starts_at": iso(w.starts_at),
                       "ends_at": iso(w.ends_at), "reason": w.reason,
                       "maintenance_mode": d.maintenance_mode})
        return
    table = Table(title=f"Maintenance windows ({len(rows)})", title_justify="left")
    for column in ("id", "device", "starts (UTC)", "ends (UTC)", "in maintenance", "reason"):
        table.add_column(column)
    for w, d in rows:
        table.add_row(str(w.id), d.name, w.starts_at.strftime("%Y-%m-%d %H:%M"),
                      w.ends_at.strftime("%Y-%m-%d %H:%M"), "yes" if d.maintenance_mode else "no",
                      w.reason)
    console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``monitors`` to ``app``."""
    app.add_typer(monitors_app, name="monitors")
