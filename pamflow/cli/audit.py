"""CLI commands: ``pamflow audit list|verify`` (the tamper-evident audit log)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .common import console, fail, iso, json_line, parse_time

audit_app = typer.Typer(help="The tamper-evident audit log: list (filter by actor, action, "
                             "object, time), verify the hash chain.", no_args_is_help=True)


@audit_app.command("list")
def list_entries(
    actor: str = typer.Option(None, help="Who: exact, or with * as a wildcard (cli:*, robot:*)."),
    action: str = typer.Option(None, help="What: exact, or with * (secret_viewed, reservation.*)."),
    object_: str = typer.Option(None, "--object",
                                help="On what: TYPE or TYPE:ID (device:12, credential:7, "
                                     "password_reservation, import_file:devices.csv)."),
    since: str = typer.Option(None, help="From this time on (ISO 8601, now, -1h, -7d)."),
    until: str = typer.Option(None, help="Before this time (ISO 8601, now, -1h, -7d)."),
    limit: int = typer.Option(50, min=1, max=100_000, help="Newest first, at most this many."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per entry."),
) -> None:
    """Audit entries, newest first (they never hold a secret)."""
    from pamflow import audit, db
    from pamflow.models import utcnow

    now = utcnow()
    start = parse_time(since, "--since", now=now) if since else None
    end = parse_time(until, "--until", now=now) if until else None
    entity = entity_id = None
    if object_:
        entity, _, rest = object_.partition(":")
        entity_id = rest or None
        if not entity:
            fail("--object: give TYPE or TYPE:ID, e.g. device:12", code=2)
    with db.session() as s:
        rows = audit.entries(s, actor=actor, action=action, entity=entity, entity_id=entity_id,
                             since=start, until=end, limit=limit)
    if as_json:
        for r in rows:
            json_line({"id": r.id, "at": iso(r.at), "actor": r.actor, "action": r.action,
                       "object_type": r.entity, "object_id": r.entity_id, "detail": r.detail,
                       "prev_hash": r.prev_hash, "hash": r.hash})
        return
    table = Table(title=f"Audit log ({len(rows)} entries, newest first)", title_justify="left")
    for column in ("id", "at (UTC)", "actor", "action", "object", "detail"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for r in rows:
        what = r.entity + (f":{r.entity_id}" if r.entity_id is not None else "")
        detail = json.dumps(r.detail, default=str, ensure_ascii=False)
        table.add_row(str(r.id), r.at.strftime("%Y-%m-%d %H:%M:%S"), r.actor, r.action, what,
                      detail if len(detail) <= 120 else detail[:117] + "...")
    console.print(table, highlight=False)


@audit_app.command("verify")
def verify(
    batch: int = typer.Option(1000, min=1, max=100_000, help="Rows read at a time."),
) -> None:
    """Walk the hash chain from the first entry to the last (streamed, never all in memory).

    Prints the number of entries checked and "intact", or the first broken entry and why,
    and exits 1. (The removal of the very last entries cannot be seen from the chain.)
    """
    from pamflow import audit, db

    with db.session() as s:
        check = audit.check_chain(s, batch=batch)
    if check.intact:
        typer.echo(f"audit log intact: {check.rows} entries checked")
        return
    fail(f"audit log broken at entry {check.broken_at} ({check.rows} entries checked): "
         f"{check.reason}")


def register(app: typer.Typer) -> None:
    """Add ``audit`` to ``app``."""
    app.add_typer(audit_app, name="audit")
