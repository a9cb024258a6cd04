"""CLI commands: ``pamflow purge run|warehouse|conciliate|settings`` (data purge and
retention) and ``pamflow tenant list|remove|restore`` (tenants and their clean-up).

``purge run`` is the data archiver and log retention robots' pass in this process:
expired rows moved to archive files in batches (``--dry-run`` counts only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import typer
from rich.table import Table

from .common import actor, console, fail, iso, json_line

purge_app = typer.Typer(help="Data purge and retention: run the archiver, purge the "
                             "warehouse, conciliate archives, show the settings.",
                        no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants: list, remove (data deleted after the grace period), "
                              "restore.", no_args_is_help=True)


@contextmanager
def _refusals() -> Iterator[None]:
    """pamflow's refusals as one line and exit 2 (never a traceback)."""
    from pamflow.errors import PamflowError

    try:
        yield
    except PamflowError as exc:
        fail(f"pamflow: {exc}", code=2)


def _settings(block: str | None):
    from sqlmodel import Session

    from pamflow import db
    from pamflow.purge import with_parameters

    base = None
    if block:
        from blocks.retention import load_retention_block

        base = load_retention_block(block)
        if base is None:
            fail(f"no Data retention block named {block[:100]!r} (or no Prefect API)", code=2)
    with Session(db.store()) as s:
        return with_parameters(s, base)


@purge_app.command("run")
def run(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; change nothing."),
    dataset: list[str] = typer.Option(None, "--dataset", help="Only these datasets (session, "
                                      "operation, notification, webhook_delivery, audit_log)."),
    tenant: str = typer.Option(None, help="Only this tenant's logs."),
    block: str = typer.Option(None, help="Data retention block to start from (default: the "
                                         "built-in defaults and system parameters)."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per dataset and tenant."),
) -> None:
    """Move expired rows to the archive in batches (the data archiver and log retention).

    Nothing leaves the store without being in a checksummed archive file first; audit rows
    only by sealed block (``pamflow audit seal``).
    """
    from pamflow import db
    from pamflow.purge import ALL_DATASETS, archive_expired

    with _refusals():
        settings = _settings(block)
        results = archive_expired(db.store(), settings, datasets=tuple(dataset or ALL_DATASETS),
                                  tenant=tenant, dry_run=dry_run, actor=actor())
    if as_json:
        for r in results:
            json_line(r.as_dict())
        return
    table = Table(title="Purge " + ("(dry run: nothing changed)" if dry_run else "done"),
                  title_justify="left")
    for column in ("dataset", "tenant", "retention (days)", "control date", "rows",
                   "dependent rows", "batches", "kept: unsealed audit"):
        table.add_column(column)
    for r in results:
        table.add_row(r.dataset, r.tenant or "(all)", str(r.retention_days),
                      r.cutoff.strftime("%Y-%m-%d %H:%M"), str(r.rows), str(r.child_rows),
                      str(r.batches), str(r.kept_unsealed))
    console.print(table, highlight=False)


@purge_app.command("warehouse")
def warehouse(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count only."),
    block: str = typer.Option(None, help="Data retention block to start from."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line."),
) -> None:
    """Delete archive files past the warehouse retention (the warehouse purge)."""
    from pamflow import db
    from pamflow.purge import purge_warehouse

    with _refusals():
        result = purge_warehouse(db.store(), _settings(block), dry_run=dry_run, actor=actor())
    if as_json:
        json_line(asdict(result))
        return
    console.print(f"{result.expired_batches} archive file(s) past retention"
                  + (" (dry run)" if dry_run else " deleted")
                  + f", {result.expired_rows} row(s), {result.freed_bytes} bytes")


@purge_app.command("conciliate")
def conciliate_cmd(
    block: str = typer.Option(None, help="Data retention block to start from."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: a summary, then problems."),
) -> None:
    """Check archive records against archive files (warehouse conciliation); exit 1 when
    they disagree."""
    from pamflow import db
    from pamflow.purge import conciliate

    with _refusals():
        result = conciliate(db.store(), _settings(block))
    if as_json:
        json_line({"batches": result.batches, "rows": result.rows, "ok": result.ok,
                   "problems": len(result.problems)})
        for p in result.problems:
            json_line(asdict(p))
    else:
        console.print(f"{result.batches} archive(s), {result.rows} row(s) checked; "
                      f"{len(result.problems)} discrepancy(ies)", highlight=False)
        for p in result.problems:
            console.print(f"  batch {p.batch_id or '-'} {p.path}: {p.problem}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@purge_app.command("settings")
def settings_cmd(
    block: str = typer.Option(None, help="Data retention block to start from."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """The retention settings in force (block, then system parameters)."""
    with _refusals():
        values = _settings(block).public()
    if as_json:
        json_line(values)
        return
    for k, v in values.items():
        console.print(f"{k}: {v}", highlight=False)


@tenant_app.command("list")
def tenant_list(as_json: bool = typer.Option(False, "--json", help="JSON lines.")) -> None:
    """Tenants, with their removal and clean-up times."""
    from sqlmodel import Session, select

    from pamflow import db
    from pamflow.models import Tenant
    from pamflow.purge import tenant_names

    with Session(db.store()) as s:
        rows = {t.name: t for t in s.exec(select(Tenant))}
        names = tenant_names(s)
    for name in names:
        t = rows.get(name)
        item = {"tenant": name, "removed_at": iso(t.deleted_at) if t else None,
                "cleaned_at": iso(t.cleaned_at) if t else None}
        if as_json:
            json_line(item)
        else:
            console.print(f"{name}  removed: {item['removed_at'] or '-'}  cleaned: "
                          f"{item['cleaned_at'] or '-'}", highlight=False)


@tenant_app.command("remove")
def tenant_remove(name: str = typer.Argument(..., help="The tenant.")) -> None:
    """Remove a tenant: its data is deleted by the tenant-clean robot after the grace period
    (retention setting tenant_grace_days, two months by default). Audited."""
    from pamflow import db
    from pamflow.purge import remove_tenant

    with _refusals():
        row = remove_tenant(db.store(), name, actor=actor())
    console.print(f"tenant {row.name} removed at {iso(row.deleted_at)}; its data is deleted "
                  "after the grace period", highlight=False)


@tenant_app.command("restore")
def tenant_restore(name: str = typer.Argument(..., help="The tenant.")) -> None:
    """Undo a removal before the tenant was cleaned. Audited."""
    from pamflow import db
    from pamflow.purge import restore_tenant

    with _refusals():
        restore_tenant(db.store(), name, actor=actor())
    console.print(f"tenant {name} restored", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``purge`` and ``tenant`` to ``app``."""
    app.add_typer(purge_app, name="purge")
    app.add_typer(tenant_app, name="tenant")
