"""Operation and credential tasks: the queue, the executor and the credential robots'
passes (``pamflow.operations`` and ``pamflow.credentials`` wrapped for Prefect). The
executor gets its named password policies from the Password policy blocks.

Task runs are per batch or per pass, never per operation or per device. What they return
and publish carries ids, account and device names and counts — never a secret.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine
from sqlmodel import col

from blocks.password_policy import load_policy_block
from pamflow.credentials import DueChange, QueuedCheck, Reminder, ReservationEvent
from pamflow.operations.executor import DrainSummary, Recovery, ServeSummary
from pamflow.operations.queue import Cancelled


def _uuid(value: Any) -> UUID:
    """An artifact call's result in a synchronous flow (Prefect types it as maybe a coroutine)."""
    assert isinstance(value, UUID), value
    return value


TABLE_ROWS_MAX = 500


def _store():
    from pamflow.db import store

    return store()


# ----------------------------------------------------------------------------- executor
@task(name="execute-operation-batches", task_run_name="execute-operations-{owner}",
      cache_policy=NO_CACHE)
def execute_operation_batches(engine: Engine, owner: str, batch_size: int = 100,
                              workers: int = 16, kinds: list[str] | None = None,
                              lease_s: float | None = None, on_batch=None,
                              stop: threading.Event | None = None, should_stop=None,
                              policy_source=None,
                              progress_key: str = "operation-executor-progress") -> DrainSummary:
    """Claim and run batches until the queue has nothing runnable (one task run per burst).

    Progress is published per batch. ``stop`` (a stopping service) and ``should_stop``
    (the instance's lifetime) end the burst between batches.
    """
    from pamflow.operations.executor import drain
    from pamflow.operations.queue import DEFAULT_LEASE_SECONDS, runnable_count

    expected = max(1, runnable_count(engine))
    progress = _uuid(create_progress_artifact(0.0, key=progress_key,
                                        description=f"Operation executor {owner}: "
                                                    f"{expected} operation(s) runnable"))

    def published(summary: DrainSummary) -> None:
        done = summary.claimed
        update_progress_artifact(progress, min(100.0, 100.0 * done / max(expected, done)),
                                 description=f"{done} operation(s) run in {summary.batches} "
                                             f"batch(es): {summary.succeeded} succeeded, "
                                             f"{summary.failed} failed")
        if on_batch is not None:
            on_batch(summary)

    summary = drain(engine, owner=owner, batch_size=batch_size, workers=workers, kinds=kinds,
                    lease_s=lease_s or DEFAULT_LEASE_SECONDS, on_batch=published, stop=stop,
                    should_stop=should_stop, policy_source=policy_source or load_policy_block)
    update_progress_artifact(progress, 100.0, description=(
        f"{summary.claimed} operation(s): {summary.succeeded} succeeded, "
        f"{summary.failed} failed"))
    return summary


def serve_operations(lifetime_s: float, poll_s: float, batch_size: int, workers: int,
                     burst=None, duties: bool = True) -> ServeSummary:
    """One executor service instance (``pamflow.operations.executor.serve``) on the configured store;
    ``burst`` runs each burst of work (the task above, so the UI shows one task run each).
    With ``duties`` it also runs the registered duties (``pamflow.operations.duties``) when
    due, publishing each robot's table when its duty found something to do."""
    from pamflow.operations.duties import DutyRunner
    from pamflow.operations.executor import new_owner, serve

    engine = _store()
    owner = new_owner("executor-service")
    runner = DutyRunner(engine, owner, on_done=publish_duty) if duties else None
    return serve(lifetime_s, poll_s, engine, owner=owner,
                 batch_size=batch_size, workers=workers, burst=burst,
                 policy_source=load_policy_block,
                 duties=runner.run_due if runner is not None else None)


def publish_duty(duty, result) -> UUID:
    """A duty that did something publishes its robot's table (same artifact key as the robot's
    own runs), from inside the service instance that ran it."""
    from pamflow.operations.duties import found

    rows = result if isinstance(result, list) else \
        [asdict(result) if is_dataclass(result) and not isinstance(result, type) else
         {"done": found(result)}]
    return publish_table(duty.name, rows, f"{found(result)} done by the {duty.name} duty "
                                          f"(in {duty.host})")


def publish_executor_report(summary: ServeSummary, key: str = "operation-executor") -> UUID:
    """What an executor instance did, as a markdown artifact (counts only); an instance
    that ran nothing is tagged ``nothing-to-do`` (pruned later, tasks/housekeeping.py)."""
    if not summary.claimed and not summary.duty_work:
        from tasks.housekeeping import mark_nothing_to_do

        mark_nothing_to_do()
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary.as_dict().items()]
    return _uuid(create_markdown_artifact("\n".join(["## Operation executor", "", *lines]),
                                          key=key,
                                          description=f"Operation executor {summary.owner}"))


# ----------------------------------------------------------------------------- queue upkeep
@task(name="retry-failed-operations")
def retry_failed_operations(limit: int = 1000) -> list[int]:
    """Re-queue failed, retryable operations whose backoff has passed."""
    from pamflow.operations.queue import retry_failed

    return retry_failed(_store(), limit=limit)


@task(name="cancel-expired-operations")
def cancel_expired_operations() -> list[Cancelled]:
    """Cancel queued operations past their expiry."""
    from pamflow.operations.queue import cancel_expired

    return cancel_expired(_store())


@task(name="operations-by-id")
def describe_operations(ids: list[int]) -> list[dict]:
    """Rows for an artifact: id, kind, credential, state, attempts, error (no secrets)."""
    from sqlmodel import Session, select

    from pamflow.models import Operation

    if not ids:
        return []
    with Session(_store()) as db:
        ops = db.exec(select(Operation).where(col(Operation.id).in_(ids[:TABLE_ROWS_MAX]))).all()
        return [{"operation": o.id, "kind": o.kind, "credential": o.credential_id,
                 "state": o.state, "attempts": f"{o.attempts}/{o.max_attempts}",
                 "last error": (o.result or {}).get("last_error") or o.error or ""}
                for o in ops]


# ----------------------------------------------------------------------------- credentials
@task(name="recover-credentials")
def recover_credentials(workers: int = 16) -> Recovery:
    """Release expired leases, queue reconciliation for every unsettled credential, run it."""
    from pamflow.operations.executor import recover

    return recover(_store(), workers=workers, policy_source=load_policy_block)


@task(name="credential-statuses")
def credential_statuses(ids: list[int]) -> list[dict]:
    """Account, device, status and detail of credentials (for artifacts; no secrets)."""
    from sqlmodel import Session, select

    from pamflow.models import Credential, Device

    if not ids:
        return []
    with Session(_store()) as db:
        rows = db.exec(select(Credential, Device).join(Device, col(Device.id) == col(Credential.device_id))
                       .where(col(Credential.id).in_(ids[:TABLE_ROWS_MAX]))).all()
        return [{"credential": c.id, "account": c.username, "device": d.name, "status": c.status,
                 "detail": c.status_detail or ""} for c, d in rows]


@task(name="queue-due-password-changes")
def queue_due_password_changes(limit: int = 5000) -> list[DueChange]:
    """Queue changes for credentials past expiry or due by their change interval."""
    from pamflow.credentials import queue_due_changes

    return queue_due_changes(_store(), limit=limit)


@task(name="queue-password-checks")
def queue_password_checks(max_age_hours: float = 24.0, limit: int = 5000) -> list[QueuedCheck]:
    """Queue verify operations for credentials not verified within ``max_age_hours``."""
    from pamflow.credentials import queue_password_checks as queue_checks

    return queue_checks(_store(), max_age=timedelta(hours=max_age_hours), limit=limit)


@task(name="queue-password-change-reminders")
def queue_password_change_reminders(days_before: int | None = None) -> list[Reminder]:
    """Queue "Password change reminder" notifications (system parameter
    ``password_change_reminder_days``, default 7, unless ``days_before`` is given)."""
    from pamflow.credentials import queue_change_reminders
    from pamflow.models import SystemParameter

    engine = _store()
    if days_before is None:
        from sqlmodel import Session

        with Session(engine) as db:
            row = db.get(SystemParameter, "password_change_reminder_days")
            days_before = int(row.value) if row is not None else 7
    return queue_change_reminders(engine, days_before=days_before)


@task(name="process-password-reservations")
def process_password_reservations() -> list[ReservationEvent]:
    """Start/end reservations whose time has come and queue their changes."""
    from pamflow.credentials import process_reservations

    return process_reservations(_store())


# ----------------------------------------------------------------------------- artifacts
def publish_table(key: str, rows: Sequence[Any], description: str) -> UUID:
    """A table artifact of up to ``TABLE_ROWS_MAX`` rows (dicts or dataclasses; the rest
    counted in the text)."""
    rows = [asdict(r) if is_dataclass(r) and not isinstance(r, type) else r for r in rows]
    more = len(rows) - TABLE_ROWS_MAX
    if more > 0:
        description += f" (first {TABLE_ROWS_MAX} rows of {len(rows)})"
    if not rows:
        from tasks.housekeeping import mark_nothing_to_do

        mark_nothing_to_do()
        return _uuid(create_markdown_artifact(f"**{description}**: nothing to do.", key=key,
                                              description=description))
    return _uuid(create_table_artifact(rows[:TABLE_ROWS_MAX], key=key, description=description))


__all__ = ["cancel_expired_operations", "credential_statuses", "describe_operations",
           "execute_operation_batches", "process_password_reservations",
           "publish_executor_report", "publish_table", "queue_due_password_changes",
           "queue_password_change_reminders", "queue_password_checks", "recover_credentials",
           "retry_failed_operations", "serve_operations"]
