"""The operation executor robots: Operation executor, Operation executor: Retry, and
Expired operation cancellation.

The executor is a *service robot* (DESIGN.md): each flow run is one long-lived instance
that polls the queue every ``poll_s`` seconds for ``lifetime_s`` seconds and runs what it
finds in batches (one task run per burst of batches); the deployment's schedule starts a
fresh instance when one ends, its ``concurrency_limit`` is the number of simultaneous
instances, and the event ``pam.operation.queued`` starts one at once when none is running.
The rules live in ``pamflow.operations.queue``, ``pamflow.operations.executor`` and ``pamflow.credentials``.
"""

from __future__ import annotations

from prefect import flow

from pamflow.operations.queue import Cancelled
from tasks.operations import (
    cancel_expired_operations,
    describe_operations,
    execute_operation_batches,
    publish_executor_report,
    publish_table,
    retry_failed_operations,
    serve_operations,
)


@flow(name="operation-executor")
def operation_executor(lifetime_s: float = 3600.0, poll_s: float = 1.0, batch_size: int = 100,
                       workers: int = 16, duties: bool = True) -> dict:
    """Operation executor: batch operator executor; execute tasks ordered by Change Password,
    Certificate and Discovery modules.

    Polls the queue every ``poll_s`` seconds for ``lifetime_s`` seconds; ``batch_size``
    operations per claim, ``workers`` concurrent target connections. Each burst of work is
    a task run. With ``duties`` it also runs the minute-level jobs of the Retry, Expired
    operation cancellation, Expired password, Password reservation and Password
    reconciliation robots when due (``pamflow.operations.duties``). On SIGTERM (the worker
    cancelling the run, ``pamflow up`` stopping) it claims nothing more, gives back what it
    has not started on a target and ends.
    """
    summary = serve_operations(lifetime_s, poll_s, batch_size, workers,
                               burst=execute_operation_batches, duties=duties)
    publish_executor_report(summary)
    return summary.as_dict()


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
def expired_operation_cancellation() -> list[Cancelled]:
    """Expired operation cancellation: looks for queued operations that expired the execution
    time, canceling them."""
    cancelled = cancel_expired_operations()
    publish_table("expired-operation-cancellation", cancelled,
                  f"{len(cancelled)} queued operation(s) cancelled: past their expiry")
    return cancelled
