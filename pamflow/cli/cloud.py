"""CLI commands: ``pamflow cloud import ACCOUNT`` and ``pamflow cloud accounts`` (the cloud
accounts are Prefect blocks, so both need the Prefect API: ``pamflow up`` or
``PREFECT_API_URL``)."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import actor, console, fail, fmt, json_line

cloud_app = typer.Typer(help="Cloud device import (AWS, GCP, Azure): the accounts, and importing "
                             "one now.", no_args_is_help=True)


def _blocks():  # noqa: ANN202 - the blocks module, imported late (it imports Prefect)
    import blocks.cloud_accounts as mod

    return mod


@cloud_app.command("import")
def import_(
    account: str = typer.Argument(..., help="The cloud account: the name of its block."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: the counts, then one "
                                                       "JSON line per change."),
) -> None:
    """Import one cloud account's instances as devices now, in this process, whatever its
    schedule: added, updated, removed (instances gone: marked, never deleted) and skipped.
    Exit code 2, with the reason, when the account cannot be listed (nothing is written)."""
    from pamflow.cloud import import_account
    from pamflow.errors import PamflowError

    try:
        acct, _ = _blocks().load_account(account)
        result = import_account(acct, actor=actor())
    except PamflowError as exc:
        fail(f"cannot import cloud account {account}: {exc}", code=2)
    except Exception as exc:  # noqa: BLE001 - no Prefect API, a block that cannot load: one line
        fail(f"cannot import cloud account {account}: {type(exc).__name__}: {str(exc)[:300]}",
             code=2)
    if as_json:
        json_line(result.summary())
        for c in result.changes:
            json_line({"action": c.action, "instance": c.external_id, "name": c.name,
                       "address": c.address, "detail": c.detail})
        return
    s = result.summary()
    console.print(f"{result.provider} account {result.account} (tenant {result.tenant}): "
                  f"{s['listed']} listed, {s['added']} added, {s['updated']} updated, "
                  f"{s['unchanged']} unchanged, {s['removed']} removed, {s['skipped']} skipped",
                  highlight=False)
    if result.changes:
        table = Table(title="Changes", title_justify="left")
        for column in ("action", "instance", "name", "address", "detail"):
            table.add_column(column)
        for ch in result.changes[:200]:
            table.add_row(ch.action, ch.external_id, ch.name, fmt(ch.address), ch.detail)
        console.print(table, highlight=False, markup=False)


@cloud_app.command("accounts")
def accounts(as_json: bool = typer.Option(False, "--json", help="JSON lines, one per account.")
             ) -> None:
    """The cloud account blocks: provider, tenant, scope, schedule and last import."""
    from pamflow.cloud import last_import
    from pamflow.errors import PamflowError

    mod = _blocks()
    try:
        names = mod.account_names()
        rows = [(n, *mod.load_account(n)) for n in names]
    except PamflowError as exc:
        fail(str(exc), code=2)
    except Exception as exc:  # noqa: BLE001 - no Prefect API
        fail(f"cannot read the cloud accounts: {type(exc).__name__}: {str(exc)[:300]}", code=2)
    if as_json:
        for name, acct, block in rows:
            json_line({"name": name, "provider": acct.provider, "tenant": acct.tenant,
                       "enabled": block.enabled, "every_hours": block.every_hours,
                       "regions": acct.regions, "credentials": acct.credentials,
                       "vault_entry": acct.vault_entry, "last_import": fmt(last_import(name))})
        return
    table = Table(title="Cloud accounts", title_justify="left")
    for c in ("name", "provider", "tenant", "enabled", "every", "scope", "credentials",
              "last import"):
        table.add_column(c)
    for name, acct, block in rows:
        scope = acct.project or acct.subscription_id or ""
        table.add_row(name, acct.provider, acct.tenant, "yes" if block.enabled else "no",
                      f"{block.every_hours} h", f"{scope} {fmt(acct.regions)}".strip(),
                      acct.vault_entry or acct.credentials, fmt(last_import(name)))
    console.print(table, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``pamflow cloud ...`` to ``app``."""
    app.add_typer(cloud_app, name="cloud")
