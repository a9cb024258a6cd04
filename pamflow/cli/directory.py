"""CLI commands: ``pamflow directory sync | access | import-computers | import-database |
status`` — the directory robots' passes, run in this process.

Settings are read from the blocks saved on the Prefect server (LDAP directory, Device
database; ``pamflow up`` or ``PREFECT_API_URL``); passwords from pamflow's vault. Every
command has ``--json`` (one line). Any refusal — no block, bad settings, no vault secret,
a directory that refuses the bind or cannot be reached, a query that is not a read — is
one line on stderr and exit code 2; nothing is written then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.table import Table

from .common import actor, console, fail, iso, json_line

directory_app = typer.Typer(help="Directory robots: LDAP/AD sync, access groups, LDAP and "
                                 "database device imports.", no_args_is_help=True)
T = TypeVar("T")
REJECTED_PRINTED = 20


@contextmanager
def _prefect_api() -> Iterator[None]:
    """The Prefect API the blocks are saved on, for this command (never an ephemeral one)."""
    from pamflow.cli.inventory import _prefect_api as reachable

    api = reachable()
    if api is None:
        fail("the directory settings are blocks on the Prefect server, which does not answer: "
             "start it with `pamflow up`, or set PREFECT_API_URL", code=2)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield


def _guarded(work: Callable[[], T]) -> T:
    """``work()``, with pamflow's refusals turned into one line and exit code 2."""
    from pamflow.errors import PamflowError

    try:
        return work()
    except PamflowError as exc:
        fail(f"pamflow directory: {exc}", code=2)


def _print(title: str, summary: dict[str, Any], rejected: list, as_json: bool) -> None:
    if as_json:
        json_line({**summary, "rejected": [r.as_dict() for r in rejected[:1000]],
                   "rejected_count": len(rejected)})
        return
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table, highlight=False)
    for r in rejected[:REJECTED_PRINTED]:
        console.print(f"rejected {r.dn}: {r.reason}", highlight=False, soft_wrap=True)
    if len(rejected) > REJECTED_PRINTED:
        console.print(f"… {len(rejected) - REJECTED_PRINTED} more rejected (--json lists them)",
                      highlight=False)


@directory_app.command("sync")
def sync(
    directory: str = typer.Option("default", "--directory", "-d",
                                  help="The LDAP directory block's name."),
    full: bool = typer.Option(False, "--full", help="Read every entry (else only what changed "
                                                    "since the last run)."),
    user: str = typer.Option(None, "--user", help="Sync this one user only (a name, escaped "
                                                  "into the filter); disables nobody."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """LDAP/AD synchronization: users and groups into pamflow's users and access groups;
    users who left the scope are disabled, never deleted."""
    from pamflow import db
    from pamflow import directory as d

    with _prefect_api():
        from blocks.ldap_directory import load_directory

        settings = _guarded(lambda: load_directory(directory))
    who = actor()

    def run() -> d.SyncResult:
        engine = db.store()
        read = d.read_directory(engine, settings, d.bind_password(engine, settings), full=full,
                                username=user)
        return d.apply_read(engine, read, who, compile_access=lambda e, ids: d.compile_access(
            e, ids, actor=who).changed)

    result = _guarded(run)
    _print(f"Directory {directory}: {result.mode} sync", result.summary(), result.rejected,
           as_json)


@directory_app.command("access")
def access(
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant's users."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Access groups processing: compile every user's granted access from the rules of the
    active access groups they belong to."""
    from pamflow import db
    from pamflow import directory as d

    result = _guarded(lambda: d.compile_access(db.store(), tenant=tenant, actor=actor()))
    if as_json:
        json_line({**result.summary(), "invalid": result.invalid_groups})
        return
    _print("Access groups processing", result.summary(), [], False)
    for g in result.invalid_groups:
        console.print(f"group {g['group']} grants nothing: {g['reason']}", highlight=False)


@directory_app.command("import-computers")
def import_computers(
    directory: str = typer.Option("default", "--directory", "-d",
                                  help="The LDAP directory block's name."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """LDAP device import: the directory's computers into devices (upserted by their
    directory id; those that left are marked inactive, never deleted)."""
    from pamflow import db
    from pamflow import directory as d

    with _prefect_api():
        from blocks.ldap_directory import load_directory

        settings = _guarded(lambda: load_directory(directory))

    def run() -> d.DeviceImportResult:
        engine = db.store()
        return d.import_computers(engine, settings, d.bind_password(engine, settings),
                                  actor=actor())

    result = _guarded(run)
    _print(f"Computers of {directory}", result.summary(), result.rejected, as_json)


@directory_app.command("import-database")
def import_database(
    database: str = typer.Option("default", "--database", help="The device database block's "
                                                                "name."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Device database import: devices from an external SQL database (its query run
    read-only), upserted by the external id column."""
    from pamflow import db
    from pamflow import directory as d

    with _prefect_api():
        from blocks.device_database import load_device_database

        settings = _guarded(lambda: load_device_database(database))

    def run() -> d.DeviceImportResult:
        engine = db.store()
        return d.import_database(engine, settings, d.database_password(engine, settings),
                                 actor=actor())

    result = _guarded(run)
    _print(f"Devices of database {database}", result.summary(), result.rejected, as_json)


@directory_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="JSON lines.")) -> None:
    """Each directory's last runs: incremental mark, last run, last full run, last result."""
    from sqlmodel import select

    from pamflow import db
    from pamflow.models import DirectorySyncState

    with db.session() as s:
        states = list(s.exec(select(DirectorySyncState)))
    if as_json:
        for st in states:
            json_line({"key": st.key, "mark": st.mark, "last_run_at": iso(st.last_run_at),
                       "last_full_at": iso(st.last_full_at), "last_result": st.last_result})
        return
    if not states:
        console.print("no directory has been synchronised yet", highlight=False)
        return
    table = Table(title="Directory synchronisation", title_justify="left")
    for col in ("directory:kind", "mark", "last run", "last full run", "last result"):
        table.add_column(col)
    for st in states:
        r = st.last_result or {}
        table.add_row(st.key, st.mark or "—", iso(st.last_run_at) or "—",
                      iso(st.last_full_at) or "—",
                      f"{r.get('mode', '?')}: {r.get('created', 0)} created, "
                      f"{r.get('updated', 0)} updated, {r.get('disabled', 0)} disabled, "
                      f"{r.get('rejected', 0)} rejected")
    console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``pamflow directory ...`` to ``app``."""
    app.add_typer(directory_app, name="directory")
