"""Directory robots: LDAP/AD synchronization, access groups processing, LDAP device import
and device database import. Settings come from the LDAP directory and Device database
blocks (edited in the UI); passwords from pamflow's vault. Each run publishes a table of
its result (counts and rejected entries, never a secret) and a progress artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.utilities.annotations import quote

from pamflow.directory import DeviceImportResult, DirectoryNotConfigured, Rejection
from tasks import directory as t
from tasks import ran_sync

REJECTED_SHOWN = 200


def _progress(key: str, what: str) -> Callable[[float, str], None]:
    artifact: UUID = ran_sync(create_progress_artifact(0.0, key=key, description=what),
                              "create_progress_artifact")

    last = [0.0]

    def update(pct: float, text: str) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0 and pct < 100:  # at most one API call a second
            return
        last[0] = now
        update_progress_artifact(artifact, max(0.0, min(100.0, pct)), description=text)

    return update


def _not_configured(key: str, exc: DirectoryNotConfigured) -> dict[str, Any]:
    get_run_logger().warning("%s", exc)
    create_markdown_artifact(f"# Not configured\n\n{exc}\n\nNothing was read or written.",
                             key=key, description="not configured")
    return {"configured": False, "reason": str(exc)}


def _publish(key: str, title: str, counts: dict[str, Any], rejected: list[Rejection]) -> None:
    rows = [{"what": k, "count": v} for k, v in counts.items()]
    create_table_artifact(rows, key=key, description=title)
    if rejected:
        shown = [r.as_dict() for r in rejected[:REJECTED_SHOWN]]
        more = len(rejected) - len(shown)
        create_table_artifact(shown, key=f"{key}-rejected",
                              description=f"{title}: {len(rejected)} rejected"
                                          + (f" ({more} more not shown)" if more else ""))


@flow(name="ldap-ad-synchronization", flow_run_name="sync {directory}")
def ldap_ad_synchronization(directory: str = "default", full: bool = False,
                            username: str | None = None) -> dict[str, Any]:
    """LDAP/AD Synchronization: syncs user's accounts with the configured LDAP/AD server
    (LDAP data collector: adding users automatically) — users and groups into pamflow's
    users and access groups; users who left are disabled, never deleted."""
    from blocks.ldap_directory import load_directory

    try:
        settings = load_directory(directory)
    except DirectoryNotConfigured as exc:
        return _not_configured("ldap-ad-synchronization", exc)
    progress = _progress("ldap-ad-synchronization-progress", f"Synchronising {directory}")
    read = t.read_directory(settings, full, username, progress)
    progress(40, f"{read.read} entries read ({read.mode}), {read.listed} listed")
    result = t.apply_directory(quote(read), f"robot:ldap-ad-synchronization:{directory}",  # type: ignore[call-overload]
                               progress)
    progress(100, f"{directory}: done")
    _publish("ldap-ad-synchronization", f"LDAP/AD synchronization of {directory} "
             f"({result.mode})", result.summary(), result.rejected)
    get_run_logger().info("directory %s (%s): %d read, %d created, %d updated, %d disabled, "
                          "%d rejected", directory, result.mode, result.read, result.created,
                          result.updated, result.disabled, len(result.rejected))
    return result.summary()


@flow(name="access-groups-processing")
def access_groups_processing(tenant: str | None = None) -> dict[str, Any]:
    """Access groups processing: process all access groups compiling granted user access."""
    result = t.compile_access(tenant)
    rows = [{"what": k, "count": v} for k, v in result.summary().items()]
    create_table_artifact(rows, key="access-groups-processing",
                          description="Access groups processing")
    if result.invalid_groups:
        create_table_artifact(result.invalid_groups, key="access-groups-processing-invalid",
                              description="Access groups whose rules grant nothing (malformed)")
    return result.summary()


def _device_summary(key: str, title: str, result: DeviceImportResult) -> dict[str, Any]:
    _publish(key, title, result.summary(), result.rejected)
    get_run_logger().info("%s: %d read, %d created, %d updated, %d removed, %d rejected", title,
                          result.read, result.created, result.updated, result.removed,
                          len(result.rejected))
    return result.summary()


@flow(name="ldap-device-import", flow_run_name="computers of {directory}")
def ldap_device_import(directory: str = "default") -> dict[str, Any]:
    """LDAP device import: adding devices automatically — the directory's computers into
    devices, upserted by their directory id; computers that left are marked removed."""
    from blocks.ldap_directory import load_directory

    try:
        settings = load_directory(directory)
        if not settings.computer_base:
            raise DirectoryNotConfigured(f"LDAP directory {directory}: no computer_base is set, "
                                         "so no computers are imported from it")
    except DirectoryNotConfigured as exc:
        return _not_configured("ldap-device-import", exc)
    progress = _progress("ldap-device-import-progress", f"Importing computers of {directory}")
    result = t.import_computers(settings, progress)
    progress(100, f"{directory}: done")
    return _device_summary("ldap-device-import", f"LDAP device import from {directory}", result)


@flow(name="device-database-import", flow_run_name="devices of {database}")
def device_database_import(database: str = "default") -> dict[str, Any]:
    """Device database import: enable external device database import job — devices from an
    external SQL database (read-only query), upserted by their external id."""
    from blocks.device_database import load_device_database

    try:
        settings = load_device_database(database)
    except DirectoryNotConfigured as exc:
        return _not_configured("device-database-import", exc)
    progress = _progress("device-database-import-progress", f"Importing devices of {database}")
    result = t.import_device_database(settings, progress)
    progress(100, f"{database}: done")
    return _device_summary("device-database-import", f"Device database import from {database}",
                           result)
