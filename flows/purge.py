"""The data purge robots (seed 000 "Data purge", seed 001 job scheduler): Data archiver,
log retention, Warehouse purge, Warehouse conciliation, idle session deletion and tenant
clean.

Each is a scheduled robot doing one pass. Rows are moved to compressed, checksummed
archive files before they leave the store, in bounded batches; the audit log only by
sealed block. The rules live in ``pamflow.purge``; the settings come from the Data
retention block and the system parameters.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from pamflow.errors import PamflowError
from pamflow.purge import DATA_DATASETS, LOG_DATASETS
from tasks.operations import publish_table
from tasks.purge import (
    archive_expired_rows,
    clean_removed_tenants,
    close_idle,
    conciliate_warehouse,
    purge_warehouse_files,
    result_rows,
    retention_settings,
)


class WarehouseMismatch(PamflowError):
    """Warehouse conciliation found archives that do not agree with their records."""


@flow(name="data-archiver")
def data_archiver(dry_run: bool = False, settings_block: str = "default") -> list[dict]:
    """Data archiver: archive expired database data. It can configure control date.

    Sent and failed notifications, delivered webhook calls and sealed audit blocks past
    their retention are moved to archive files (the control date is now minus the
    retention); ``dry_run`` counts what would go.
    """
    settings = retention_settings(settings_block)
    results = archive_expired_rows(settings, DATA_DATASETS, dry_run, "robot:data-archiver",
                                   "data-archiver-progress")
    rows = result_rows(results)
    publish_table("data-archiver", rows, f"{sum(r.rows for r in results)} expired row(s) "
                  + ("would be archived (dry run)" if dry_run else "archived"))
    return [r.as_dict() for r in results]


@flow(name="log-retention")
def log_retention(dry_run: bool = False, settings_block: str = "default") -> list[dict]:
    """Log retention (logretentionjob): deletes tenant's logs older than the value defined
    for the logretentiondays system parameter for each tenant.

    A tenant's logs (sessions with their events, finished operations) are archived first,
    then deleted, batch by batch.
    """
    settings = retention_settings(settings_block)
    results = archive_expired_rows(settings, LOG_DATASETS, dry_run, "robot:log-retention",
                                   "log-retention-progress")
    publish_table("log-retention", result_rows(results),
                  f"{sum(r.rows for r in results)} log row(s) past their tenant's retention "
                  + ("would be archived (dry run)" if dry_run else "archived and deleted"))
    return [r.as_dict() for r in results]


@flow(name="warehouse-purge")
def warehouse_purge(dry_run: bool = False, settings_block: str = "default") -> dict:
    """Warehouse purge: delete expired database data. It can configure control date.

    Archive files older than the warehouse retention are deleted; their records stay, with
    counts and checksums (audit archives only when their own retention is set).
    """
    settings = retention_settings(settings_block)
    result = purge_warehouse_files(settings, dry_run)
    publish_table("warehouse-purge", [asdict(result)],
                  f"{result.expired_batches} archive file(s) past retention "
                  + ("(dry run)" if dry_run else "deleted"))
    return asdict(result)


@flow(name="warehouse-conciliation")
def warehouse_conciliation(settings_block: str = "default") -> dict:
    """Warehouse conciliation: checks if virtual data and physical data are compliance.

    Every archive record's file exists with its size, checksum and row count, its rows are
    no longer in the store, an audit block still holds its seal, and no file lacks a record.
    Fails when they do not agree (the table lists each discrepancy).
    """
    settings = retention_settings(settings_block)
    result = conciliate_warehouse(settings)
    publish_table("warehouse-conciliation", [asdict(p) for p in result.problems],
                  f"{result.batches} archive(s) with {result.rows} row(s) checked, "
                  f"{len(result.problems)} discrepancy(ies)")
    if not result.ok:
        raise WarehouseMismatch(f"{len(result.problems)} archive discrepancy(ies): first "
                                f"{result.problems[0].path}: {result.problems[0].problem}")
    return {"batches": result.batches, "rows": result.rows, "problems": 0}


@flow(name="idle-session-deletion")
def idle_session_deletion(settings_block: str = "default") -> list[dict]:
    """Idle session deletion: closing the sessions that passed the idle session timeout
    thresholds."""
    settings = retention_settings(settings_block)
    closed = close_idle(settings)
    publish_table("idle-session-deletion",
                  [{**asdict(c), "idle_since": c.idle_since.isoformat()} for c in closed],
                  f"{len(closed)} session(s) idle over {settings.idle_session_minutes} "
                  "minute(s) closed")
    return [{**asdict(c), "idle_since": c.idle_since.isoformat()} for c in closed]


@flow(name="tenant-clean")
def tenant_clean(dry_run: bool = False, settings_block: str = "default") -> list[dict]:
    """Tenant clean (tenantcleanjob): fully deletes the tenants which are softly deleted
    more than two months ago (the grace period is a retention setting)."""
    settings = retention_settings(settings_block)
    cleaned = clean_removed_tenants(settings, dry_run)
    publish_table("tenant-clean", [{"tenant": c.tenant, "removed": c.deleted_at.isoformat(),
                                    "rows": sum(c.rows.values()), "archive files":
                                    c.archive_files, "dry run": c.dry_run} for c in cleaned],
                  f"{len(cleaned)} removed tenant(s) past their grace period "
                  + ("(dry run)" if dry_run else "cleaned"))
    return [{**asdict(c), "deleted_at": c.deleted_at.isoformat()} for c in cleaned]
