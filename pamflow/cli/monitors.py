"""CLI command: ``pamflow monitors status`` (what the system monitors last saw)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .common import console, fail, iso, json_line

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


def register(app: typer.Typer) -> None:
    """Add ``monitors`` to ``app``."""
    app.add_typer(monitors_app, name="monitors")
