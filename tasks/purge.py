"""Purge and retention tasks: ``pamflow.purge`` wrapped for Prefect, with the settings from
the Data retention block and system parameters, and progress artifacts per batch.

What they return and publish holds counts, datasets, tenants and archive paths — never a
row's content.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from blocks.retention import load_retention_block
from pamflow.purge import (
    ConciliationResult,
    DatasetResult,
    IdleClosed,
    RetentionSettings,
    TenantCleaned,
    WarehouseResult,
)
from tasks.operations import _uuid


def _store():
    from pamflow.db import store

    return store()


@task(name="retention-settings", cache_policy=NO_CACHE)
def retention_settings(block: str = "default") -> RetentionSettings:
    """The Data retention block ``block`` (defaults when there is none), with the system
    parameters applied."""
    from sqlmodel import Session

    from pamflow.purge import with_parameters

    with Session(_store()) as db:
        return with_parameters(db, load_retention_block(block))


@task(name="archive-expired-rows", cache_policy=NO_CACHE)
def archive_expired_rows(settings: RetentionSettings, datasets: tuple[str, ...],
                         dry_run: bool, actor: str, progress_key: str) -> list[DatasetResult]:
    """Move the expired rows of ``datasets`` to the archive in batches (progress per batch)."""
    from pamflow.purge import archive_expired

    engine = _store()
    if dry_run:
        return archive_expired(engine, settings, datasets=datasets, dry_run=True, actor=actor)
    expected = max(1, sum(r.rows for r in archive_expired(engine, settings, datasets=datasets,
                                                          dry_run=True)))
    progress = _uuid(create_progress_artifact(0.0, key=progress_key,
                                              description=f"{expected} expired row(s) to move"))
    moved: dict[tuple[str, str | None], int] = {}

    def on_batch(res: DatasetResult) -> None:
        moved[(res.dataset, res.tenant)] = res.rows
        done = sum(moved.values())
        update_progress_artifact(progress, min(100.0, 100.0 * done / max(expected, done)),
                                 description=f"{done} of {expected} row(s) moved "
                                             f"({res.dataset}, {res.tenant or 'all tenants'})")

    results = archive_expired(engine, settings, datasets=datasets, actor=actor, on_batch=on_batch)
    update_progress_artifact(progress, 100.0, description=f"{sum(moved.values())} row(s) moved")
    return results


@task(name="purge-warehouse", cache_policy=NO_CACHE)
def purge_warehouse_files(settings: RetentionSettings, dry_run: bool) -> WarehouseResult:
    from pamflow.purge import purge_warehouse

    return purge_warehouse(_store(), settings, dry_run=dry_run)


@task(name="conciliate-warehouse", cache_policy=NO_CACHE)
def conciliate_warehouse(settings: RetentionSettings) -> ConciliationResult:
    from pamflow.purge import conciliate

    return conciliate(_store(), settings)


@task(name="close-idle-sessions", cache_policy=NO_CACHE)
def close_idle(settings: RetentionSettings) -> list[IdleClosed]:
    from pamflow.purge import close_idle_sessions

    return close_idle_sessions(_store(), settings)


@task(name="clean-removed-tenants", cache_policy=NO_CACHE)
def clean_removed_tenants(settings: RetentionSettings, dry_run: bool) -> list[TenantCleaned]:
    from pamflow.purge import clean_tenants

    progress = None if dry_run else _uuid(create_progress_artifact(
        0.0, key="tenant-clean-progress", description="cleaning removed tenants"))

    def on_batch(res: TenantCleaned) -> None:
        if progress is not None:
            update_progress_artifact(progress, 50.0, description=f"tenant {res.tenant}: "
                                     f"{sum(res.rows.values())} row(s) deleted so far")

    out = clean_tenants(_store(), settings, dry_run=dry_run, on_batch=on_batch)
    if progress is not None:
        update_progress_artifact(progress, 100.0, description=f"{len(out)} tenant(s) cleaned")
    return out


def result_rows(results: list[DatasetResult]) -> list[dict[str, Any]]:
    return [{"dataset": r.dataset, "tenant": r.tenant or "(all)", "retention days":
             r.retention_days, "control date": r.cutoff.strftime("%Y-%m-%d %H:%M"),
             "rows": r.rows, "dependent rows": r.child_rows, "batches": r.batches,
             "kept (unsealed audit)": r.kept_unsealed, "dry run": r.dry_run} for r in results]


__all__ = ["archive_expired_rows", "clean_removed_tenants", "close_idle",
           "conciliate_warehouse", "purge_warehouse_files", "result_rows", "retention_settings"]
