"""CLI commands: ``pamflow webhooks add-source | rotate-secret | remove-source | list | outbox |
serve``."""

from __future__ import annotations

import typer

webhooks_app = typer.Typer(help="The webhook gateway: sources, their secrets, and the server.",
                           no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@webhooks_app.command("add-source")
def add_source(
    name: str = typer.Argument(..., help="Source name: the {source} of /hooks/{source} "
                                         "and of the events pam.<source>.<event>."),
    tenant: str = typer.Option("default", "--tenant",
                               help="The tenant this source acts for: the gateway sets the tenant "
                                    "of every call's payload to it (an import from this source "
                                    "writes into this tenant only). Fixed once added."),
) -> None:
    """Create a source and print its secret (shown this once; stored encrypted)."""
    from pamflow import db
    from pamflow.webhooks.sources import SourceError
    from pamflow.webhooks.sources import add_source as add

    try:
        secret = add(db.store(), name, tenant)
    except SourceError as exc:
        _fail(str(exc))
    typer.echo(f"source {name} created for tenant {tenant}; its secret (shown once, keep it in "
               "the caller's secret store):")
    typer.echo(secret)


@webhooks_app.command("rotate-secret")
def rotate_secret(
    name: str,
    grace_seconds: int = typer.Option(0, "--grace-seconds", min=0, max=7 * 86400,
                                      help="Keep accepting the old secret this long (default: "
                                           "refuse it as soon as gateways refresh, within ~1 s)."),
) -> None:
    """Give a source a new secret and print it (shown this once)."""
    from pamflow import db
    from pamflow.webhooks.sources import SourceError
    from pamflow.webhooks.sources import rotate_secret as rotate

    try:
        secret = rotate(db.store(), name, grace_seconds)
    except SourceError as exc:
        _fail(str(exc))
    old = (f"the old one is accepted for {grace_seconds} more seconds" if grace_seconds
           else "the old one is refused from now on")
    typer.echo(f"source {name}: new secret (shown once); {old}:")
    typer.echo(secret)


@webhooks_app.command("remove-source")
def remove_source(name: str) -> None:
    """Delete a source: its calls are refused from now on."""
    from pamflow import db
    from pamflow.webhooks.sources import SourceError
    from pamflow.webhooks.sources import remove_source as remove

    try:
        remove(db.store(), name)
    except SourceError as exc:
        _fail(str(exc))
    typer.echo(f"source {name} removed")


@webhooks_app.command("list")
def list_sources() -> None:
    """The sources (never their secrets) and the events each may send."""
    from pamflow import db
    from pamflow.webhooks.schemas import EVENT_SCHEMAS
    from pamflow.webhooks.sources import list_sources as listing

    rows = listing(db.store())
    if not rows:
        typer.echo("no webhook sources; add one with: pamflow webhooks add-source NAME")
        return
    typer.echo(f"{'SOURCE':<20} {'TENANT':<20} {'VERSION':>7}  {'ROTATED':<25} EVENTS")
    for s in rows:
        events = [e for e in EVENT_SCHEMAS if e.startswith(f"pam.{s.name}.")]
        rotated = s.rotated_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.rotated_at else "never"
        grace = " (old secret in grace)" if s.previous_valid_until else ""
        typer.echo(f"{s.name:<20} {s.tenant:<20} {s.secret_version:>7}  {rotated:<25} "
                   f"{', '.join(events) or '(no event types registered)'}{grace}")


@webhooks_app.command("outbox")
def outbox(
    requeue: list[str] = typer.Option(None, "--requeue", metavar="EVENT_ID",
                                      help="Give this dead row back to the forwarder (repeatable)."),
    requeue_all: bool = typer.Option(False, "--requeue-all", help="Give every dead row back."),
    limit: int = typer.Option(50, min=1, help="Dead rows shown, newest first."),
) -> None:
    """The outbox: how many calls wait for Prefect, and the dead rows (never forwarded) with
    the reason; re-queue dead rows once the cause is fixed."""
    from pamflow import db
    from pamflow.webhooks import outbox as ob

    engine = db.store()
    if requeue or requeue_all:
        n = ob.requeue(engine, None if requeue_all else list(requeue))
        typer.echo(f"{n} dead row(s) re-queued")
        if requeue and n < len(requeue):
            _fail(f"{len(requeue) - n} of the event ids given are not dead rows")
        return
    dead = ob.dead_rows(engine, limit)
    typer.echo(f"outbox: {ob.pending_count(engine)} waiting for Prefect, {ob.dead_count(engine)} dead")
    if not dead:
        return
    typer.echo(f"{'DEAD SINCE':<24} {'EVENT':<28} {'DELIVERY':<24} {'TRIES':>5}  {'EVENT ID':<36}  ERROR")
    for r in dead:
        when = r["dead_at"].strftime("%Y-%m-%d %H:%M:%S UTC")
        typer.echo(f"{when:<24} {r['event']:<28} {r['delivery_id'][:24]:<24} {r['attempts']:>5}  "
                   f"{r['event_id']:<36}  {r['last_error'] or ''}")
    typer.echo("re-queue with: pamflow webhooks outbox --requeue EVENT_ID (or --requeue-all)")


@webhooks_app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(4280, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes (each forwards its outbox "
                                               "rows; leases keep them from double-sending)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Run the webhook gateway (POST /hooks/{source}, GET /health); forwards to PREFECT_API_URL."""
    import logging

    import uvicorn

    from pamflow import db
    from pamflow.events import prefect_api_url

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db.store()  # migrate once, before the workers start
    from pamflow.vault import vault

    vault()  # a store sealed with another key is refused here, before serving
    typer.echo(f"webhook gateway on http://{host}:{port}/hooks/<source>, forwarding to "
               f"{prefect_api_url()}/events")
    uvicorn.run("pamflow.webhooks.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, access_log=False, lifespan="on")


def register(app: typer.Typer) -> None:
    """Add ``pamflow webhooks ...`` to ``app``."""
    app.add_typer(webhooks_app, name="webhooks")
