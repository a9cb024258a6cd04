"""CLI commands: ``pamflow reservations add|list|cancel|process`` (password reservations).

A reservation holds a credential for someone from a start to an end; the
password-reservation robot changes the password when it starts and when it ends (unless
told not to). ``process`` runs the robot's pass in this process, for a host without the
platform running.
"""

from __future__ import annotations

import getpass

import typer
from rich.table import Table

from .common import actor, console, fail, find_credential, json_line, parse_time, run_queue

reservations_app = typer.Typer(help="Password reservations: add, list, cancel, process.",
                               no_args_is_help=True)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return ""


def _changes(start: bool, end: bool) -> str:
    if start and end:
        return "the password changes when it starts and when it ends"
    if start or end:
        return f"the password changes when it {'starts' if start else 'ends'}"
    return "the password is not changed"


@reservations_app.command("add")
def add(
    credential: str = typer.Argument(..., help="Credential id, or a device (id, address, name)."),
    username: str = typer.Argument(None, help="The username, when a device is given."),
    start: str = typer.Option("now", "--start", help="When it starts: now, +10m, or ISO 8601 "
                                                     "(2030-01-31T09:00Z; no offset means UTC)."),
    end: str = typer.Option(..., "--end", help="When it ends: +2h, +1d (from the start), or ISO "
                                               "8601."),
    by: str = typer.Option(None, "--by", help="Who it is for (default: your login name)."),
    change_on_start: bool = typer.Option(True, "--change-on-start/--no-change-on-start",
                                         help="Change the password when it starts."),
    change_on_end: bool = typer.Option(True, "--change-on-end/--no-change-on-end",
                                       help="Change the password when it ends."),
    note: str = typer.Option(None, "--note", help="Why (free text, at most 1,000 characters)."),
    tenant: str = typer.Option(None, help="The device's tenant, when the address is ambiguous."),
) -> None:
    """Reserve a credential for someone from a start to an end.

    Refused when it overlaps another scheduled or active reservation of the credential,
    starts in the past or ends before it starts. Audited (reservation.create).
    """
    from pamflow import db
    from pamflow.credentials import reservations
    from pamflow.models import utcnow

    now = utcnow()
    starts = parse_time(start, "--start", now=now)
    ends = parse_time(end, "--end", now=now, base=starts)
    with db.session() as s:
        cred, dev = find_credential(s, credential, username, tenant)
    try:
        made = reservations.create(db.store(), cred.id or 0, starts, ends, by or _login(),
                                   change_on_start=change_on_start, change_on_end=change_on_end,
                                   note=note, now=now, actor=actor())
    except reservations.ReservationError as exc:
        fail(f"cannot reserve {cred.username} on {dev.name}: {exc}")
    changes = _changes(made.change_on_start, made.change_on_end)
    console.print(f"reservation {made.id}: {made.account} on {made.device} (credential "
                  f"{made.credential_id}) for {made.requested_by} from "
                  f"{made.starts_at:%Y-%m-%d %H:%M} to {made.ends_at:%Y-%m-%d %H:%M} UTC; {changes}",
                  highlight=False)
    console.print("the password-reservation robot starts and ends it (every minute); without the "
                  "platform: pamflow reservations process", highlight=False)


@reservations_app.command("list")
def list_(
    state: str = typer.Option(None, help="scheduled, active, finished, cancelled, or open "
                                         "(scheduled and active)."),
    credential: int = typer.Option(None, help="Only this credential's reservations."),
    tenant: str = typer.Option(None),
    limit: int = typer.Option(200, min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per reservation."),
) -> None:
    """Reservations, soonest start first."""
    from pamflow import db
    from pamflow.credentials import reservations

    try:
        found = reservations.list_reservations(db.store(), state=state, credential_id=credential,
                                               tenant=tenant, limit=limit)
    except reservations.ReservationError as exc:
        fail(str(exc), code=2)
    if as_json:
        for r in found:
            json_line(r.as_dict())
        return
    table = Table(title=f"Reservations ({len(found)})", title_justify="left")
    for column in ("id", "credential", "account", "device", "for", "starts (UTC)", "ends (UTC)",
                   "state", "change at", "note"):
        table.add_column(column, justify="right" if column in ("id", "credential") else "left")
    for r in found:
        at = "/".join(p for p, on in (("start", r.change_on_start), ("end", r.change_on_end)) if on)
        table.add_row(str(r.id), str(r.credential_id), r.account, r.device, r.requested_by,
                      f"{r.starts_at:%Y-%m-%d %H:%M}", f"{r.ends_at:%Y-%m-%d %H:%M}", r.state,
                      at or "—", (r.note or "")[:60])
    console.print(table, highlight=False)


@reservations_app.command("cancel")
def cancel(reservation_id: int = typer.Argument(..., help="The reservation's id."),
           tenant: str = typer.Option(None, help="Only within this tenant.")) -> None:
    """Cancel a scheduled or active reservation (audited: reservation.cancel).

    An active one ends now: when it asked for a change at its end, that change is queued.
    """
    from pamflow import db
    from pamflow.credentials import reservations

    try:
        done = reservations.cancel(db.store(), reservation_id, actor=actor(), tenant=tenant)
    except reservations.ReservationError as exc:
        fail(f"cannot cancel: {exc}")
    r = done.reservation
    what = f"cancelled reservation {r.id} ({r.account} on {r.device})"
    if not done.was_active:
        typer.echo(f"{what}; it had not started: nothing to change")
    elif done.end_change_operation_id is not None:
        how = "joined the change already queued" if done.end_change_joined else "was queued"
        typer.echo(f"{what}; it was active: the password change for its end {how} "
                   f"(operation {done.end_change_operation_id})")
    else:
        typer.echo(f"{what}; it was active and asked for no change at its end: the password "
                   "stays as it is")


@reservations_app.command("process")
def process(
    run: bool = typer.Option(False, "--run", help="Then run the queued changes in this process."),
) -> None:
    """Start and end the reservations whose time has come, queuing their changes: the
    password-reservation robot's pass (every minute on the platform), run here. The
    operation executor robot makes the changes, or this process with --run."""
    from pamflow import db
    from pamflow.credentials import process_reservations

    events = process_reservations(db.store(), actor=actor())
    for e in events:
        verb = "started" if e.phase == "start" else "ended"
        tail = ": password change queued" if e.change_queued else ""
        typer.echo(f"reservation {e.reservation_id} (credential {e.credential_id}) {verb}{tail}")
    if not events:
        typer.echo("no reservation starts or ends now")
    if run:
        run_queue()


def register(app: typer.Typer) -> None:
    """Add ``reservations`` to ``app``."""
    app.add_typer(reservations_app, name="reservations")
