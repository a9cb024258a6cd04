"""CLI commands: ``pamflow notifications list|show|resend|types|routes|secret``."""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from .common import console, fail, fmt, iso, json_line, parse_time

notifications_app = typer.Typer(help="Notifications: the catalogue, queued and sent messages, "
                                     "resending, routes (who gets what) and channel secrets.",
                                no_args_is_help=True)
routes_app = typer.Typer(help="Routes: which users, groups or addresses get which types or "
                              "families, on which channel, at once or in the daily digest.",
                         no_args_is_help=True)
secret_app = typer.Typer(help="Channel secrets (SMTP password, webhook signing keys), sealed "
                              "by pamflow's vault.", no_args_is_help=True)
notifications_app.add_typer(routes_app, name="routes")
notifications_app.add_typer(secret_app, name="secret")


def _message_dict(m) -> dict:
    return {"id": m.id, "message_id": m.message_id, "tenant": m.tenant, "channel": m.channel,
            "recipient": m.recipient, "type": m.type, "severity": m.severity,
            "subject": m.subject, "state": m.state, "attempts": m.attempts,
            "notification_ids": m.notification_ids, "error": m.error,
            "created_at": iso(m.created_at), "sent_at": iso(m.sent_at),
            "next_attempt_at": iso(m.next_attempt_at)}


def _notification_dict(n) -> dict:
    return {"id": n.id, "type": n.type, "family": n.family, "tenant": n.tenant,
            "severity": n.severity, "subject": n.subject, "state": n.state, "repeats": n.repeats,
            "created_at": iso(n.created_at), "routed_at": iso(n.routed_at)}


@notifications_app.command("list")
def list_cmd(
    state: str = typer.Option(None, help="pending, sent, dead, digest, merged (messages); "
                                         "queued, routed, unrouted (with --notifications)."),
    type_name: str = typer.Option(None, "--type", help="A catalogue type."),
    recipient: str = typer.Option(None, help="An exact recipient."),
    tenant: str = typer.Option(None, help="Only this tenant."),
    since: str = typer.Option(None, help="From this time on (ISO 8601, -1h, -7d)."),
    queued: bool = typer.Option(False, "--notifications",
                                help="List the notifications robots queued, not the messages."),
    limit: int = typer.Option(50, min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json", help="JSON lines."),
) -> None:
    """Messages (one per recipient and channel), newest first; or the queued notifications."""
    from pamflow import db
    from pamflow.models import utcnow
    from pamflow.notifications import admin

    if state and state not in (admin.NOTIFICATION_STATES if queued else admin.MESSAGE_STATES):
        fail(f"--state: one of {', '.join(admin.NOTIFICATION_STATES if queued else admin.MESSAGE_STATES)}",
             code=2)
    start = parse_time(since, "--since", now=utcnow()) if since else None
    with db.session() as s:
        if queued:
            rows = [_notification_dict(n) for n in admin.list_notifications(
                s, state=state, type_name=type_name, tenant=tenant, limit=limit)]
            cols: tuple[str, ...] = ("id", "type", "tenant", "severity", "state", "repeats", "subject")
        else:
            rows = [_message_dict(m) for m in admin.list_messages(
                s, state=state, type_name=type_name, recipient=recipient, tenant=tenant,
                since=start, limit=limit)]
            cols = ("id", "type", "channel", "recipient", "state", "attempts", "subject", "error")
    if as_json:
        for r in rows:
            json_line(r)
        return
    table = Table(title=f"{'Notifications' if queued else 'Messages'} ({len(rows)}, newest first)",
                  title_justify="left")
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[fmt(r.get(c)) if c != "subject" else str(r[c])[:80] for c in cols])
    console.print(table, highlight=False)


@notifications_app.command("show")
def show(
    message_id: int = typer.Argument(..., help="A message id from `list`."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One message: its headers, state, error and text."""
    from pamflow import db
    from pamflow.models import NotificationMessage

    with db.session() as s:
        m = s.get(NotificationMessage, message_id)
        if m is None:
            fail(f"no message {message_id}", code=2)
        out = {**_message_dict(m), "text": m.text}
    if as_json:
        json_line(out)
        return
    for k, v in out.items():
        if k != "text":
            typer.echo(f"{k}: {fmt(v)}")
    typer.echo("")
    typer.echo(out["text"])


@notifications_app.command("resend")
def resend_cmd(
    message_ids: list[int] = typer.Argument(..., help="Message ids (dead or sent) to send again."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send messages again (same Message-ID) at the sender's next pass."""
    from pamflow import audit, db
    from pamflow.notifications import admin, emit_queued

    from .common import actor

    with db.session() as s:
        count = admin.resend(s, message_ids)
        audit.record(s, actor(), "notification.resend", "notification_message", None,
                     {"ids": message_ids[:100], "count": count})
        s.commit()
    emit_queued(force=True)
    if as_json:
        json_line({"resent": count, "asked": len(message_ids)})
        return
    typer.echo(f"{count} of {len(message_ids)} message(s) queued again")
    if count < len(message_ids):
        raise typer.Exit(1)


@notifications_app.command("bulk")
def bulk(
    recipients: list[str] = typer.Argument(..., help="user:NAME, group:NAME or addresses."),
    title: str = typer.Option(..., help="The subject (one line, at most 200 characters)."),
    tenant: str = typer.Option("default"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Bulk mail: queue one message, read from standard input (UTF-8, at most 64 KiB), to
    users, groups or addresses; the email sender delivers it (one mail per address)."""
    import uuid

    from pamflow import audit, db, notifications
    from pamflow.notifications.routing import Route, RouteError, validate

    from .common import actor

    if not title.strip() or len(title) > 200 or any(ord(c) < 32 for c in title):
        fail("--title: one line of 1-200 characters", code=2)
    for r in recipients:
        try:
            validate(Route(match="Bulk mail", recipient=r, tenant=tenant))
        except RouteError as exc:
            fail(str(exc), code=2)
    raw = sys.stdin.buffer.read(64 * 1024 + 1) if hasattr(sys.stdin, "buffer") else \
        sys.stdin.read(64 * 1024 + 1).encode()
    if len(raw) > 64 * 1024:
        fail("the message is longer than 64 KiB", code=2)
    try:
        message = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        fail("the message is not UTF-8", code=2)
    if not message:
        fail("the message (standard input) is empty", code=2)
    with db.session() as s:
        try:
            row = notifications.queue(s, "Bulk mail", context={"title": title, "message": message},
                                      recipients=recipients, tenant=tenant, key=uuid.uuid4().hex)
        except ValueError as exc:
            fail(str(exc), code=2)
        s.flush()
        audit.record(s, actor(), "notification.bulk", "notification", row.id,
                     {"recipients": recipients[:100], "title": title})
        s.commit()
        nid = row.id
    if as_json:
        json_line({"notification_id": nid, "recipients": recipients})
        return
    typer.echo(f"bulk mail queued as notification {nid} for {len(recipients)} recipient(s)")


@notifications_app.command("mfa-verify")
def mfa_verify(username: str = typer.Argument(..., help="The user the code was mailed to."),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Check a one-time code read from standard input: exit 0 once for the right code before
    it expires, 1 otherwise (wrong, expired, used, too many tries)."""
    from pamflow import db
    from pamflow.notifications.mfa import verify

    from .common import actor

    code = sys.stdin.readline(64).strip()
    with db.session() as s:
        ok = verify(s, username[:255], code, actor=actor())
        s.commit()
    if as_json:
        json_line({"username": username, "valid": ok})
    else:
        typer.echo("code accepted" if ok else "code refused")
    if not ok:
        raise typer.Exit(1)


@notifications_app.command("types")
def types(
    family: str = typer.Option(None, help="Only this family."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The catalogue: every type, its family, severity and source (002, 003, pamflow)."""
    from pamflow.notifications import CATALOGUE

    rows = [t for t in CATALOGUE.values() if family is None or t.family == family]
    if as_json:
        for t in rows:
            json_line({"name": t.name, "family": t.family, "severity": t.severity,
                       "source": t.source, "newer": t.newer, "older": t.older,
                       "description": t.description})
        return
    table = Table(title=f"Notification types ({len(rows)})", title_justify="left")
    for c in ("family", "name", "severity", "source", "renamed"):
        table.add_column(c)
    for t in rows:
        renamed = f"→ {t.newer}" if t.newer else (f"← {t.older}" if t.older else "")
        table.add_row(t.family, t.name, t.severity, t.source, renamed)
    console.print(table, highlight=False)


@routes_app.command("add")
def routes_add(
    match: str = typer.Argument(..., help="A type, a family, or * for everything."),
    recipient: str = typer.Argument(..., help="user:NAME, group:NAME or an address (email); "
                                              "udp://host:port, tcp://host:port (syslog); "
                                              "https://... (webhook)."),
    channel: str = typer.Option("email", help="email, syslog or webhook."),
    mode: str = typer.Option("immediate", help="immediate or digest (once a day)."),
    min_severity: str = typer.Option("info", help="info, notice, warning or critical."),
    tenant: str = typer.Option("default"),
    secret: str = typer.Option(None, help="webhook: the notification secret that signs the calls."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Add a route (or change the mode/severity of the same match, recipient and channel)."""
    from pamflow import audit, db
    from pamflow.notifications.routing import Route, RouteError, add_route

    from .common import actor

    route = Route(match=match, recipient=recipient, channel=channel, mode=mode,
                  min_severity=min_severity, tenant=tenant, secret_ref=secret)
    with db.session() as s:
        try:
            row = add_route(s, route)
        except RouteError as exc:
            fail(str(exc), code=2)
        audit.record(s, actor(), "notification.route_added", "notification_route", row.id,
                     {"match": match, "recipient": recipient, "channel": channel, "mode": mode,
                      "tenant": tenant})
        s.commit()
        rid = row.id
    if as_json:
        json_line({**route.as_dict(), "id": rid})
        return
    typer.echo(f"route {rid}: {match} -> {recipient} ({channel}, {mode}, tenant {tenant})")


@routes_app.command("remove")
def routes_remove(route_id: int, tenant: str = typer.Option(None),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove a stored route."""
    from pamflow import audit, db
    from pamflow.notifications.routing import remove_route

    from .common import actor

    with db.session() as s:
        if not remove_route(s, route_id, tenant):
            fail(f"no route {route_id}", code=2)
        audit.record(s, actor(), "notification.route_removed", "notification_route", route_id, {})
        s.commit()
    if as_json:
        json_line({"removed": route_id})
        return
    typer.echo(f"route {route_id} removed")


@routes_app.command("list")
def routes_list(tenant: str = typer.Option(None),
                block: str = typer.Option(None, help="Also the routes of this Notification "
                                                     "routing block (needs the Prefect server)."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Stored routes (and a block's, with --block)."""
    from pamflow import db
    from pamflow.notifications.routing import stored_routes

    with db.session() as s:
        routes = stored_routes(s, tenant)
    if block:
        from blocks.notification_routing import load_routes

        routes += [r for r in load_routes(block) if tenant is None or r.tenant == tenant]
    if as_json:
        for r in routes:
            json_line(r.as_dict())
        return
    table = Table(title=f"Notification routes ({len(routes)})", title_justify="left")
    for c in ("id", "tenant", "match", "recipient", "channel", "mode", "min severity", "source"):
        table.add_column(c)
    for r in routes:
        table.add_row(fmt(r.id), r.tenant, r.match, r.recipient, r.channel, r.mode, r.min_severity,
                      r.source)
    console.print(table, highlight=False)


@secret_app.command("set")
def secret_set(name: str = typer.Argument(..., help="1-128 of A-Z a-z 0-9 . _ -"),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Seal a secret read from standard input (one line; never from the command line)."""
    from pamflow import audit, db
    from pamflow.notifications.secrets import set_secret

    from .common import actor

    value = sys.stdin.readline(8192).rstrip("\r\n")
    with db.session() as s:
        try:
            set_secret(s, name, value)
        except ValueError as exc:
            fail(str(exc), code=2)
        audit.record(s, actor(), "notification.secret_set", "notification_secret", name, {})
        s.commit()
    if as_json:
        json_line({"secret": name, "stored": True})
        return
    typer.echo(f"notification secret {name} stored (sealed by the vault)")


def register(app: typer.Typer) -> None:
    """Add ``notifications`` to ``app``."""
    app.add_typer(notifications_app, name="notifications")
