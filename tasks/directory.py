"""Prefect tasks for the directory robots (see :mod:`pamflow.directory`).

One task run per phase, never per entry. Entries cross task boundaries in memory only
(NO_CACHE, results not persisted); passwords are read from the vault inside the tasks and
never become a task input, a result or a log line.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from pamflow import db
from pamflow import directory as d

Progress = Callable[[float, str], None]


@task(name="read-directory", task_run_name="read {settings.name}", cache_policy=NO_CACHE,
      persist_result=False)
def read_directory(settings: d.DirectorySettings, full: bool, username: str | None = None,
                   progress: Progress | None = None) -> d.DirectoryRead:
    """Bind (password from the vault) and page through users and groups; writes nothing."""
    engine = db.store()
    return d.read_directory(engine, settings, d.bind_password(engine, settings), full=full,
                            username=username, progress=progress or (lambda _p, _t: None))


@task(name="apply-directory", task_run_name="apply {read.directory}", cache_policy=NO_CACHE,
      persist_result=False)
def apply_directory(read: d.DirectoryRead, actor: str, progress: Progress | None = None
                    ) -> d.SyncResult:
    """Create, update and disable users; groups and memberships; the marks, last."""
    return d.apply_read(db.store(), read, actor, progress=progress or (lambda _p, _t: None),
                        compile_access=lambda engine, ids: d.compile_access(
                            engine, ids, actor=actor).changed)


@task(name="compile-access", cache_policy=NO_CACHE, persist_result=False)
def compile_access(tenant: str | None = None) -> d.AccessResult:
    """Every user's granted access from the rules of their active access groups."""
    return d.compile_access(db.store(), tenant=tenant)


@task(name="import-computers", task_run_name="import computers of {settings.name}",
      cache_policy=NO_CACHE, persist_result=False)
def import_computers(settings: d.DirectorySettings, progress: Progress | None = None
                     ) -> d.DeviceImportResult:
    """Read the directory's computers, then upsert them as devices."""
    engine = db.store()
    return d.import_computers(engine, settings, d.bind_password(engine, settings),
                              progress=progress)


@task(name="import-device-database", task_run_name="import devices of {settings.name}",
      cache_policy=NO_CACHE, persist_result=False)
def import_device_database(settings: d.DatabaseSettings, progress: Progress | None = None
                           ) -> d.DeviceImportResult:
    """Run the query read-only, then upsert its rows as devices."""
    engine = db.store()
    return d.import_database(engine, settings, d.database_password(engine, settings),
                             progress=progress)
