"""CLI commands: ``pamflow vault status | rekey`` (the master key and the store's ciphertexts)."""

from __future__ import annotations

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


def register(app: typer.Typer) -> None:
    """Add ``pamflow vault ...`` to ``app``."""
    app.add_typer(vault_app, name="vault")
