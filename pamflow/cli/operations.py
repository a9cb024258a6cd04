"""CLI commands: ``pamflow operations list|show|queue|cancel|recover`` (the operation queue)."""

from __future__ import annotations

import json
from datetime import timedelta

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import col

console = Console()
ops_app = typer.Typer(help="The operation queue: list, show, queue, cancel, recover.",
                      no_args_is_help=True)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


@ops_app.command("list")
def list_operations(
    state: str | None = typer.Option(None, help="queued | running | succeeded | failed | cancelled"),
    kind: str | None = typer.Option(None, help="change | verify | reconcile | activate | ..."),
    credential: int | None = typer.Option(None, help="Only this credential's operations."),
    limit: int = typer.Option(50, help="Newest first, at most this many."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
) -> None:
    """List operations, newest first."""
    from sqlmodel import Session, select

    from pamflow.db import store
    from pamflow.models import Operation

    q = select(Operation).order_by(col(Operation.id).desc()).limit(limit)
    if state:
        q = q.where(col(Operation.state) == state)
    if kind:
        q = q.where(col(Operation.kind) == kind)
    if credential is not None:
        q = q.where(col(Operation.credential_id) == credential)
    with Session(store()) as db:
        ops = db.exec(q).all()
    if as_json:
        for op in ops:
            typer.echo(json.dumps(op.model_dump(), default=str))
        return
    table = Table("id", "kind", "state", "step", "credential", "device", "prio", "attempts",
                  "not before", "error")
    for op in ops:
        table.add_row(str(op.id), op.kind, op.state, op.step or "—", _fmt(op.credential_id),
                      _fmt(op.device_id), str(op.priority), f"{op.attempts}/{op.max_attempts}",
                      _fmt(op.not_before), (op.error or "")[:80])
    console.print(table)


@ops_app.command("show")
def show(operation_id: int) -> None:
    """Every field of one operation (operations never hold a secret)."""
    from sqlmodel import Session

    from pamflow.db import store
    from pamflow.models import Operation

    with Session(store()) as db:
        op = db.get(Operation, operation_id)
    if op is None:
        console.print(f"[red]no operation {operation_id}[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps(op.model_dump(), default=str, indent=2))


@ops_app.command("queue")
def queue_operation(
    kind: str = typer.Argument(..., help="change | verify | reconcile | activate"),
    credential_id: int = typer.Argument(..., help="The credential to work on."),
    priority: int = typer.Option(100, help="Lower runs first."),
    delay_s: float = typer.Option(0.0, "--delay", help="Not before this many seconds from now."),
    expires_in_s: float | None = typer.Option(None, "--expires-in",
                                              help="Cancelled if not started within this."),
    max_attempts: int = typer.Option(5, help="Tries before it stays failed."),
    requested_by: str = typer.Option("cli", help="Who asks (audited)."),
) -> None:
    """Queue an operation for a credential (a second identical one joins the queued one)."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.operations import queue

    now = utcnow()
    not_before = now + timedelta(seconds=delay_s)
    expires = not_before + timedelta(seconds=expires_in_s) if expires_in_s else None
    try:
        done = queue.enqueue(store(), kind, credential_id, priority=priority,
                             not_before=not_before, expires_at=expires,
                             max_attempts=max_attempts, requested_by=requested_by)
    except queue.QueueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    what = "joined the queued operation" if done.coalesced else "queued operation"
    typer.echo(f"{what} {done.id}")


@ops_app.command("cancel")
def cancel(operation_id: int, reason: str = typer.Option("cancelled from the CLI")) -> None:
    """Cancel a queued (or failed, awaiting retry) operation."""
    from pamflow.db import store
    from pamflow.operations import queue

    if not queue.cancel(store(), operation_id, reason=reason, actor="cli"):
        console.print(f"[red]operation {operation_id} is not queued or failed (or does not "
                      "exist): not cancelled[/red]")
        raise typer.Exit(1)
    typer.echo(f"cancelled operation {operation_id}")


@ops_app.command("recover")
def recover(
    no_run: bool = typer.Option(False, "--no-run", help="Only queue; let an executor run it."),
    workers: int = typer.Option(16, help="Concurrent target connections."),
) -> None:
    """Settle what crashes and outages left: expired leases, pending and unverified secrets."""
    from blocks.password_policy import load_policy_block
    from pamflow.db import store
    from pamflow.operations.executor import recover as do_recover

    summary = do_recover(store(), run=not no_run, workers=workers,
                         policy_source=load_policy_block)
    typer.echo(json.dumps(summary.as_dict(), default=str))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(ops_app, name="operations")
