"""Connectivity test: test all devices registered connections.

Every active device's configured ports are probed (TCP connect, SSH banner on SSH ports),
per batch of devices; each device's connectivity, last check and last seen are written to
the store, and a device that changes state queues "Lost of connectivity" or "Connectivity
restored". The rules are in ``pamflow.connectivity``.
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pamflow.connectivity import BatchesFailed, BatchReport
from tasks.net import (
    check_device_batch,
    plan_device_batches,
    publish_report,
    report_progress,
    start_progress,
    summarise,
)


# Prefect types task_runner as TaskRunner[PrefectFuture], which its own ThreadPoolTaskRunner
# (a TaskRunner[PrefectConcurrentFuture]) is not, the generic being invariant
@flow(name="connectivity-test", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def connectivity_test(batch_size: int = 1000, connect_timeout: float = 3.0,
                      banner_timeout: float = 3.0, concurrency: int = 500) -> dict:
    """Connectivity test: test all devices registered connections.

    ``batch_size`` devices per task run (up to 4 batches at once), ``concurrency`` open
    connections per batch, ``connect_timeout``/``banner_timeout`` seconds per endpoint.
    """
    started = time.monotonic()
    batches = plan_device_batches(batch_size)
    progress = start_progress(len(batches))

    running = {
        check_device_batch.submit(first, last, connect_timeout, banner_timeout, concurrency):
            f"{first}-{last}"
        for first, last in batches
    }
    reports: list[BatchReport] = []
    failed: list[str] = []
    for future in as_completed(list(running)):
        try:
            reports.append(future.result())
        except Exception:  # noqa: BLE001 - its task run shows why; the other batches go on
            failed.append(running[future])
        report_progress(progress, len(reports) + len(failed), len(batches),
                        sum(r.tested for r in reports))

    summary = summarise(reports, len(batches), sorted(failed), time.monotonic() - started)
    publish_report(summary, reports)
    if failed:
        raise BatchesFailed(f"connectivity test: {len(failed)} of {len(batches)} device batches "
                           f"failed (device id ranges {', '.join(sorted(failed))}); the others "
                           f"were recorded")
    return summary.as_dict()
