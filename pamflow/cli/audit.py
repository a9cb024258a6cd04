"""CLI commands: ``pamflow audit list|verify|seal|seal-key`` (the tamper-evident audit log)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .common import actor, console, fail, iso, json_line, parse_time

audit_app = typer.Typer(help="The tamper-evident audit log: list (filter by actor, action, "
                             "object, time), verify the hash chain and its seals, seal it.",
                        no_args_is_help=True)


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
    public_key: list[str] = typer.Option(None, "--public-key",
                                         help="Check seal signatures with this Ed25519 public "
                                              "key (base64; `pamflow audit seal-key`) instead "
                                              "of the vault's."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Check the seals and walk the hash chain from its anchor to the last entry (streamed).

    Seals (``pamflow audit seal``, the tamper-proof-log robot) are checked for their
    numbers, their chain and their Ed25519 signatures (with the key in pamflow's vault, or
    ``--public-key``); every sealed block's row count and last hash are checked while the
    chain is walked. Prints "intact", or the first altered, removed or inserted entry and
    the seal it breaks, and exits 1. After the data archiver moved old blocks to the
    archive, the walk starts from the newest archived block's seal.
    """
    from sqlmodel import select

    from pamflow import audit_seal, db
    from pamflow.models import AuditSealKey
    from pamflow.vault import VaultError, vault

    with db.session() as s:
        note = None
        try:
            # the vault is opened only when there is a seal key to open (never to create one)
            has_key = s.exec(select(AuditSealKey.id).limit(1)).first() is not None
            box = vault() if has_key and not public_key else None
            keys = audit_seal.public_keys(s, box, public_key or ())
        except audit_seal.SealError as exc:
            fail(f"pamflow: {exc}", code=2)
        except VaultError as exc:
            keys, note = None, f"seal signatures NOT checked ({exc})"
        check = audit_seal.verify_log(s, keys=keys, batch=batch)
    if note:
        check.notes.append(note)
    if as_json:
        json_line(check.as_dict())
        if not check.intact:
            raise typer.Exit(1)
        return
    if check.intact:
        signed = "signatures checked" if check.signatures_checked else "signatures NOT checked"
        typer.echo(f"audit log intact: {check.rows} entries checked; {check.seals} seal(s) "
                   f"hold ({signed}), {check.archived_seals} of them archived; "
                   f"{check.unsealed_rows} entries not yet sealed")
        for n in check.notes:
            typer.echo(n)
        return
    breaks = f"; it breaks seal #{check.seal_broken}" if check.seal_broken else ""
    if check.broken_at is None:
        fail(f"audit log seals broken: {check.reason}")
    fail(f"audit log broken at entry {check.broken_at} ({check.rows} entries checked): "
         f"{check.reason}{breaks}")


@audit_app.command("seal")
def seal_cmd(
    block_rows: int = typer.Option(5000, min=1, max=1_000_000, help="Rows per sealed block."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per seal made."),
) -> None:
    """Seal the audit rows not yet sealed (what the tamper-proof-log robot does)."""
    from pamflow import audit_seal, db
    from pamflow.vault import vault

    try:
        made = audit_seal.seal(db.store(), vault(), block_rows=block_rows,
                               actor=actor())
    except audit_seal.SealError as exc:
        fail(f"pamflow: {exc}", code=2)
    for m in made:
        if as_json:
            json_line({"seal": m.number, "after_id": m.after_id, "last_id": m.last_id,
                       "count": m.count, "head_hash": m.head_hash})
        else:
            typer.echo(f"seal #{m.number}: entries {m.after_id + 1}-{m.last_id} ({m.count})")
    if not made and not as_json:
        typer.echo("nothing to seal")


@audit_app.command("seal-key")
def seal_key() -> None:
    """Print the seal signing key's public key (base64), to verify away from the vault."""
    from pamflow import audit_seal, db
    from pamflow.vault import vault

    with db.session() as s:
        text = audit_seal.export_public_key(s, vault())
        s.commit()
    typer.echo(text)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to ``app``."""
    app.add_typer(audit_app, name="audit")
