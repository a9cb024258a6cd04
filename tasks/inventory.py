"""Prefect tasks for the device and credential inventory (batch import).

Task runs are per chunk of rows, never per row. Rows cross task boundaries in memory
only: results are not persisted and inputs are not hashed for caching, so no secret
reaches Prefect's API or its result storage (a secret is a :class:`pamflow.inventory.Secret`,
which shows as asterisks anywhere it is printed).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pamflow import inventory
from pamflow.inventory import ChunkOutcome, ImportResult, ImportRow, Sheet

# every task here: cache_policy=NO_CACHE, persist_result=False


@task(name="read-spreadsheet", task_run_name="read {path}", cache_policy=NO_CACHE, persist_result=False)
def read_spreadsheet(path: str, tenant: str) -> Sheet:
    """Parse and validate the whole file of the upload directory for ``tenant``; an unreadable
    file (or one outside the upload directory) fails the task, writing nothing."""
    return inventory.read_sheet(path, tenant)


@task(name="import-rows", task_run_name="import rows {label}", retries=1, retry_delay_seconds=2,
      cache_policy=NO_CACHE, persist_result=False)
def import_rows(rows: list[ImportRow], label: str) -> ChunkOutcome:
    """Upsert one chunk of validated rows in one transaction (row by row if it fails);
    queue a verify for each imported secret that differs from a recorded one.

    A retry is safe: the upsert is idempotent.
    """
    return inventory.write_rows(rows)


@task(name="finish-import", cache_policy=NO_CACHE, persist_result=False)
def finish_import(sheet: Sheet, outcome: ChunkOutcome) -> ImportResult:
    """Error file (in the data directory), audit record, "Batch import finished" notification."""
    return inventory.finish_import(sheet, outcome)


@task(name="record-failed-import", cache_policy=NO_CACHE, persist_result=False)
def record_failed_import(path: str, reason: str, tenant: str | None = None) -> None:
    """Audit and notify an import whose file could not be read at all."""
    inventory.record_failed_import(path, reason, tenant=tenant)
