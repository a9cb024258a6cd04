"""Network tasks: the connectivity test's batches (pamflow.connectivity wrapped for Prefect).

Task runs are per batch of devices (an id range), never per device. The artifacts the
robot publishes are built here from the batches' reports; they carry device names,
addresses, ports and reasons, never a secret (the connectivity test reads no credential).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks import ran_sync

if TYPE_CHECKING:  # imported where used: the flow module stays cheap to import
    from pamflow.connectivity import BatchReport, RunSummary

TABLE_ROWS_MAX = 1000
PROGRESS_KEY = "connectivity-test-progress"
UNREACHABLE_KEY = "connectivity-unreachable-devices"
SUMMARY_KEY = "connectivity-test-summary"


@task(name="plan-device-batches", retries=2, retry_delay_seconds=5)
def plan_device_batches(batch_size: int = 1000) -> list[tuple[int, int]]:
    """The active devices as ``(first_id, last_id)`` ranges of ``batch_size`` devices."""
    from pamflow.connectivity import plan_batches
    from pamflow.db import store

    return plan_batches(store(), batch_size)


@task(name="test-device-batch", task_run_name="test-devices-{first_id}-{last_id}",
      retries=1, retry_delay_seconds=5)
def check_device_batch(first_id: int, last_id: int, connect_timeout: float = 3.0,
                      banner_timeout: float = 3.0, concurrency: int = 500) -> BatchReport:
    """Probe the active devices with ids in ``[first_id, last_id]`` and record the results.

    A retry is safe: state changes are conditional updates, so a change is notified once.
    """
    from pamflow.connectivity import check_devices
    from pamflow.db import store

    return check_devices(store(), first_id, last_id, connect_timeout=connect_timeout,
                         banner_timeout=banner_timeout, concurrency=concurrency)


def start_progress(total_batches: int) -> UUID:
    """The progress artifact of this run (0 %)."""
    return ran_sync(create_progress_artifact(
        0.0, key=PROGRESS_KEY,
        description=f"Connectivity test: 0 of {total_batches} device batches done"),
        "create_progress_artifact")


def report_progress(artifact_id: UUID, done: int, total: int, devices_done: int) -> None:
    """Move the progress artifact to ``done`` of ``total`` batches."""
    update_progress_artifact(
        artifact_id, 100.0 * done / total if total else 100.0,
        description=f"Connectivity test: {done} of {total} device batches done "
                    f"({devices_done} devices tested)")


def summarise(reports: list[BatchReport], batches: int, failed: list[str], seconds: float
              ) -> RunSummary:
    """The run's small, readable summary (the flow returns it as a dict)."""
    from pamflow.connectivity import summarise as totals

    return totals(reports, batches, failed, seconds)


def publish_report(summary: RunSummary, reports: list[BatchReport]) -> None:
    """The table of unreachable devices and a markdown summary, as artifacts of the run."""
    rows = sorted((row for r in reports for row in r.unreachable_devices),
                  key=lambda row: (row["name"], row["address"]))
    shown = rows[:TABLE_ROWS_MAX]
    more = f" (first {TABLE_ROWS_MAX} of {len(rows)}, by name)" if len(rows) > len(shown) else ""
    create_table_artifact(
        table=shown or [{"name": "-", "address": "-", "ports": "-", "reason": "every device answered"}],
        key=UNREACHABLE_KEY,
        description=f"Unreachable devices: {len(rows)}{more}",
    )
    lost = [name for r in reports for name in r.lost]
    restored = [name for r in reports for name in r.restored]

    def names(items: list[str]) -> str:
        return ", ".join(sorted(items)[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "")

    lines = [
        "# Connectivity test",
        "",
        "| devices | tested | reachable | unreachable | no ports | lost | restored | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary.devices} | {summary.tested} | {summary.reachable} | "
        f"{summary.unreachable} | {summary.no_ports} | {summary.lost} | "
        f"{summary.restored} | {summary.seconds} |",
        "",
        "Rule: a device is reachable when any configured port accepts a TCP connection "
        "(settings `connectivity_rule: all` requires every port). Devices without ports are "
        "not tested; inactive devices are skipped.",
    ]
    if lost:
        lines += ["", f"**Lost of connectivity** ({len(lost)}): {names(lost)}"]
    if restored:
        lines += ["", f"**Connectivity restored** ({len(restored)}): {names(restored)}"]
    if summary.inconclusive:
        lines += ["", f"**Not recorded** ({summary.inconclusive}): devices this worker could "
                      "not probe (a local failure such as no free file descriptor)"]
    if summary.failed_batches:
        lines += ["", "**Failed batches** (device id ranges): " + ", ".join(summary.failed_batches)]
    create_markdown_artifact(markdown="\n".join(lines), key=SUMMARY_KEY,
                             description="Connectivity test summary")
