"""CLI commands: ``pamflow vault status | rekey`` (the master key and the store's ciphertexts)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console()
vault_app = typer.Typer(help="The vault: which keys sealed the store's secrets; re-encrypt them "
                             "under the newest key.", no_args_is_help=True)


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[red]{message}[/red]", highlight=False)
    raise typer.Exit(1)


@vault_app.command("status")
def status() -> None:
    """The key ids configured on this host, the store's ciphertexts per column and key id,
    and any that cannot be decrypted (exit code 1 when there are)."""
    from pamflow import db
    from pamflow.vault import vault
    from pamflow.vault_store import status as vault_status

    engine = db.store()
    box = vault()
    found = vault_status(engine, box)
    keys = ", ".join(f"{k} (active)" if k == found.active else k for k in found.keys)
    console.print(f"key ids on this host: {keys}", highlight=False)
    console.print(f"store canary sealed with: {found.canary_key_id or '— (none recorded)'}",
                  highlight=False)
    table = Table(title=f"Ciphertexts in the store ({found.total})", title_justify="left")
    for col in ("column", "key id", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for column, counts in found.by_column.items():
        for kid, n in sorted(counts.items()):
            table.add_row(column, kid, str(n))
    console.print(table, highlight=False)
    stale = sum(n for kid, n in found.by_key().items() if kid != found.active)
    if stale:
        console.print(f"{stale} ciphertext(s) under older keys: `pamflow vault rekey` re-encrypts "
                      "them under the active key", highlight=False)
    if found.undecryptable_total:
        for u in found.undecryptable:
            console.print(f"[red]cannot decrypt {u.column} id {u.row_id}: {u.reason}[/red]",
                          highlight=False)
        _fail(f"{found.undecryptable_total} ciphertext(s) cannot be decrypted")
    console.print("undecryptable: none", highlight=False)


@vault_app.command("rekey")
def rekey() -> None:
    """Re-encrypt every ciphertext of the store under the active key (the first of
    PAMFLOW_MASTER_KEY, or the key file's active key), so older keys can be retired.

    In chunks, one transaction each; safe to run while the platform runs and to run again
    (ciphertexts already under the active key are left alone). It first decrypts every
    ciphertext and, if any cannot be decrypted, changes nothing and lists them (exit 1):
    configure the key they need and run it again.
    """
    from pamflow import db
    from pamflow.vault import vault
    from pamflow.vault_store import RekeyRefused
    from pamflow.vault_store import rekey as do_rekey

    engine = db.store()
    box = vault()
    try:
        counts = do_rekey(engine, box)
    except RekeyRefused as exc:
        _fail(str(exc))
    table = Table(title=f"Re-encrypted under key id {box.active_key_id}", title_justify="left")
    for col in ("column", "rekeyed", "already current", "changed meanwhile"):
        table.add_column(col, justify="left" if col == "column" else "right")
    for column, tally in counts.items():
        table.add_row(column, str(tally["rekeyed"]), str(tally["current"]),
                      str(tally["changed_meanwhile"]))
    console.print(table, highlight=False)
    console.print("every ciphertext is now under the active key; older keys may be retired once "
                  "every host has the new one", highlight=False)


MAX_ENTRY_INPUT = 64 * 1024


@vault_app.command("entry-put")
def entry_put(
    name: str = typer.Argument(..., help="The entry's name (referenced by blocks, e.g. a cloud "
                                         "account's vault_entry)."),
    tenant: str = typer.Option("default", "--tenant", help="The tenant the entry belongs to."),
    kind: str = typer.Option("generic", "--kind",
                             help="What it holds: aws-access-key, gcp-token, azure-token, ..."),
) -> None:
    """Create or replace a named vault entry from a JSON object of string fields read on
    standard input (never from the command line), e.g.
    {"access_key_id": "...", "secret_access_key": "..."} for an AWS account, or
    {"access_token": "..."} for GCP/Azure. The values are encrypted by the vault; only the
    field names are shown anywhere. Exit code 2 for input that is not acceptable."""
    import json
    import sys

    from pamflow import db
    from pamflow.cli.common import actor
    from pamflow.vault_entries import VaultEntryError, put_entry

    raw = sys.stdin.buffer.read(MAX_ENTRY_INPUT + 1)
    if len(raw) > MAX_ENTRY_INPUT:
        _fail2(f"the input is larger than {MAX_ENTRY_INPUT // 1024} KiB")
    try:
        values = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        _fail2("standard input is not a UTF-8 JSON object")
    try:
        with db.session() as s:
            info = put_entry(s, name, values, tenant=tenant, kind=kind, actor=actor())
            s.commit()
    except VaultEntryError as exc:
        _fail2(str(exc))
    console.print(f"vault entry {info.name} (tenant {info.tenant}, {info.kind}) stored: fields "
                  + ", ".join(info.fields), highlight=False, markup=False)


@vault_app.command("entries")
def entries(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's entries."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per entry (never a "
                                                       "value)."),
) -> None:
    """The named vault entries: name, tenant, kind and field names (never the values)."""
    from pamflow import db
    from pamflow.cli.common import json_line
    from pamflow.vault_entries import list_entries

    with db.session() as s:
        found = list_entries(s, tenant)
    if as_json:
        for e in found:
            json_line(e.as_dict())
        return
    table = Table(title=f"Vault entries ({len(found)})", title_justify="left")
    for col in ("name", "tenant", "kind", "fields"):
        table.add_column(col)
    for e in found:
        table.add_row(e.name, e.tenant, e.kind, ", ".join(e.fields))
    console.print(table, highlight=False, markup=False)


@vault_app.command("entry-remove")
def entry_remove(name: str = typer.Argument(..., help="The entry's name.")) -> None:
    """Remove a named vault entry (audited). Exit code 2 when there is none."""
    from pamflow import db
    from pamflow.cli.common import actor
    from pamflow.vault_entries import VaultEntryError, remove_entry

    try:
        with db.session() as s:
            if not remove_entry(s, name, actor=actor()):
                _fail2(f"no vault entry {name}")
            s.commit()
    except VaultEntryError as exc:
        _fail2(str(exc))
    console.print(f"vault entry {name} removed", highlight=False, markup=False)


def _fail2(message: str) -> NoReturn:
    from pamflow.cli.common import fail

    fail(message, code=2)


def register(app: typer.Typer) -> None:
    """Add ``pamflow vault ...`` to ``app``."""
    app.add_typer(vault_app, name="vault")
