"""Batch import processing: process the uploaded spreadsheet for devices and credentials import.

Triggered by the event ``pam.import.uploaded`` (``path`` from its payload, ``tenant`` the
one the gateway set from the webhook source, see ``prefect.yaml``) and run in-process by
``pamflow import FILE``. The file is read from the upload directory only; the format,
columns and rules are documented in :mod:`pamflow.inventory`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.utilities.annotations import quote

from pamflow.inventory import CHUNK_SIZE, ChunkOutcome, ImportFileError, ImportResult
from tasks import ran_sync
from tasks.inventory import finish_import, import_rows, read_spreadsheet, record_failed_import

ERROR_TABLE_LIMIT = 500


@flow(name="batch-import-processing", flow_run_name="import {path}")
def batch_import_processing(path: str, tenant: str = "default") -> dict:
    """Batch import processing: process the uploaded spreadsheet for devices and credentials import."""
    logger = get_run_logger()
    progress = ran_sync(create_progress_artifact(0.0, key="batch-import-progress",
                                                 description=f"Importing {Path(path).name}"),
                        "create_progress_artifact")
    try:
        sheet = read_spreadsheet(path, tenant)
    except ImportFileError as exc:
        record_failed_import(path, str(exc), tenant)
        create_markdown_artifact(f"# Batch import failed\n\n{exc}\n\nNothing was imported.",
                                 key="batch-import-summary", description=f"Import of {path} failed")
        update_progress_artifact(progress, 100.0, description=f"{Path(path).name}: not importable")
        raise
    update_progress_artifact(progress, 5.0, description=f"{sheet.total_rows} rows read, "
                                                        f"{len(sheet.errors)} rejected by validation")

    outcome = ChunkOutcome()
    done = 0
    for chunk in sheet.chunks(CHUNK_SIZE):
        # quote(): Prefect would otherwise walk every row of the chunk to track inputs; it
        # unwraps the argument before the task runs, which its call signature does not say
        outcome.add(import_rows(quote(chunk),  # type: ignore[call-overload]
                                label=f"{chunk[0].row}-{chunk[-1].row}"))
        done += len(chunk)
        update_progress_artifact(progress, 5.0 + 90.0 * done / len(sheet.rows),
                                 description=f"{done} of {len(sheet.rows)} valid rows written")

    result = finish_import(quote(sheet), outcome)  # type: ignore[call-overload]  # unwrapped, as above
    publish_results(result)
    update_progress_artifact(progress, 100.0, description=f"{Path(path).name}: done")
    logger.info("Imported %s: %d rows, %d created, %d updated, %d unchanged, %d rejected",
                path, result.rows, result.created, result.updated, result.unchanged, result.rejected)
    return result.summary()


def publish_results(result: ImportResult) -> None:
    """A markdown summary and, when rows were rejected, a table of them (row, column, reason)."""
    name = Path(result.path).name
    lines = [
        f"# Batch import of `{name}`",
        "",
        "| rows | created | updated | unchanged | rejected |",
        "|---:|---:|---:|---:|---:|",
        f"| {result.rows} | {result.created} | {result.updated} | {result.unchanged} "
        f"| {result.rejected} |",
        "",
        f"Tenant `{result.tenant}`. Devices: {result.devices_created} created, "
        f"{result.devices_updated} updated. Credentials: {result.credentials_created} created, "
        f"{result.credentials_updated} updated.",
    ]
    if result.imports_to_verify:
        lines += ["", f"{result.imports_to_verify} imported password(s) differ from the recorded "
                      "ones: each is adopted only after a verify operation logs in with it."]
    if result.empty:
        lines += ["", "The file has no data rows: nothing to import."]
    if result.error_file:
        lines += ["", f"Rejected rows are listed in `{result.error_file}`."]
    if result.ignored_columns:
        lines += ["", "Ignored columns: " + ", ".join(f"`{c}`" for c in result.ignored_columns)]
    create_markdown_artifact("\n".join(lines), key="batch-import-summary",
                             description=f"Batch import of {name}")
    if result.errors:
        shown = [e.as_dict() for e in result.errors[:ERROR_TABLE_LIMIT]]
        more = len(result.errors) - len(shown)
        description = f"Rejected rows of {name}: {len(result.errors)} errors"
        if more:
            description += f" (first {len(shown)} shown, {more} more in {result.error_file})"
        create_table_artifact(shown, key="batch-import-errors", description=description)
