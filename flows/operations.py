"""The operation executor robots: Operation executor, Operation executor: Retry, and
Expired operation cancellation.

The executor is a *service robot* (DESIGN.md): each flow run is one long-lived instance
that polls the queue every ``poll_s`` seconds for ``lifetime_s`` seconds and runs what it
finds in batches (one task run per burst of batches); the deployment's schedule starts a
fresh instance when one ends, its ``concurrency_limit`` is the number of simultaneous
instances, and the event ``pam.operation.queued`` starts one at once when none is running.
The rules live in ``pamflow.queue``, ``pamflow.executor`` and ``pamflow.rotation``.
"""

from __future__ import annotations

import time

from prefect import flow

from tasks.operations import (
    cancel_expired_operations,
    describe_operations,
    execute_operation_batches,
    publish_executor_report,
    publish_table,
    retry_failed_operations,
    runnable_now,
)


@flow(name="operation-executor")
def operation_executor(lifetime_s: float = 3600.0, poll_s: float = 1.0, batch_size: int = 100,
                       workers: int = 16) -> dict:
    """Operation executor: batch operator executor; execute tasks ordered by Change Password,
    Certificate and Discovery modules.

    Polls the queue every ``poll_s`` seconds for ``lifetime_s`` seconds; ``batch_size``
    operations per claim, ``workers`` concurrent target connections.
    """
    from pamflow.executor import new_owner
    from pamflow.vault import vault

    vault()  # a store sealed with another key fails this instance now, not at its first batch
    owner = new_owner("executor-service")
    deadline = time.monotonic() + lifetime_s
    totals = {"owner": owner, "bursts": 0, "batches": 0, "claimed": 0, "succeeded": 0,
              "failed": 0, "other": 0}
    while time.monotonic() < deadline:
        if runnable_now():
            done = execute_operation_batches(owner, batch_size, workers,
                                             deadline_s=max(0.0, deadline - time.monotonic()))
            totals["bursts"] += 1
            for key in ("batches", "claimed", "succeeded", "failed", "other"):
                totals[key] += done[key]
            continue
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    publish_executor_report(totals)
    return totals


@flow(name="operation-executor-retry")
def operation_executor_retry(limit: int = 1000) -> list[int]:
    """Operation executor: Retry; retry failures registered by the Operation Executor.

    Failed operations that may succeed later (unreachable target, inconclusive outcome) go
    back to the queue once their exponential backoff has passed, up to their attempt limit.
    """
    requeued = retry_failed_operations(limit)
    publish_table("operation-executor-retry", describe_operations(requeued),
                  f"{len(requeued)} failed operation(s) queued again")
    return requeued


@flow(name="expired-operation-cancellation")
def expired_operation_cancellation() -> list[dict]:
    """Expired operation cancellation: looks for queued operations that expired the execution
    time, canceling them."""
    cancelled = cancel_expired_operations()
    publish_table("expired-operation-cancellation", cancelled,
                  f"{len(cancelled)} queued operation(s) cancelled: past their expiry")
    return cancelled
