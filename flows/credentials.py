"""The credential robots: Expired password (also the job scheduler's password change job),
Password reconciliation, password check job, password change reminder and future-date
password reservation.

Each does one pass and ends (scheduled robots). Those that need a target only queue
operations: the Operation executor runs them (one operation per credential at a time),
except reconciliation, which also drains the queue so recovery never waits for an executor.
The rules live in ``pamflow.credentials``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pamflow.credentials import DueChange, QueuedCheck, Reminder, ReservationEvent
from tasks.operations import (
    credential_statuses,
    process_password_reservations,
    publish_table,
    queue_due_password_changes,
    queue_password_change_reminders,
    queue_password_checks,
    recover_credentials,
)
from tasks.reservations import request_reservation


@flow(name="expired-password")
def expired_password(limit: int = 5000) -> list[DueChange]:
    """Expired password: request password change tasks to the Operation Executor when the
    password has expired.

    Also the job scheduler's password change job ("rotates the passwords of the accounts
    that are due to be changed"): a credential is due at its expiry or when its change
    interval has passed since the last change.
    """
    queued = queue_due_password_changes(limit)
    publish_table("expired-password", queued,
                  f"{len(queued)} password change(s) requested from the Operation executor")
    return queued


@flow(name="password-reconciliation")
def password_reconciliation(workers: int = 16) -> dict:
    """Password reconciliation: check if the recorded password is the same password applied
    to the target.

    Settles every credential left unverified or with a pending secret (and every operation
    whose executor died): tries the pending secret, then the recorded one, then the
    device's reconcile account, and records which one is true.
    """
    summary = recover_credentials(workers)
    rows = credential_statuses(summary.credentials)
    publish_table("password-reconciliation", rows,
                  f"{len(rows)} credential(s) reconciled, {summary.released_leases} "
                  "interrupted operation(s) resumed")
    return summary.as_dict()


@flow(name="password-check")
def password_check(max_age_hours: float = 24.0, limit: int = 5000) -> list[QueuedCheck]:
    """Password check job: checks the validity of the passwords of the accounts periodically.

    Queues a verify for each credential not verified within ``max_age_hours``; the
    Operation executor logs in with each and records "Password confirmed" or
    "Invalid password".
    """
    queued = queue_password_checks(max_age_hours, limit)
    publish_table("password-check", queued, f"{len(queued)} password check(s) queued")
    return queued


@flow(name="password-change-reminder")
def password_change_reminder(days_before: int | None = None) -> list[Reminder]:
    """Password change reminder: sends mail to the user before the password change period,
    based on the password change reminder day parameter.

    One "Password change reminder" notification per credential and change cycle.
    """
    sent = queue_password_change_reminders(days_before)
    publish_table("password-change-reminder", sent,
                  f"{len(sent)} password change reminder(s) queued")
    return sent


@flow(name="password-reservation")
def password_reservation(request: dict[str, Any] | None = None) -> list[ReservationEvent]:
    """Password reservation job: future-date reservation.

    Starts and ends reservations whose time has come; a change is queued on start and/or
    end as the reservation asks. With ``request`` (the payload of a
    ``pam.reservation.requested`` event, through the ``password-reservation-request``
    deployment) it first makes the reservation asked for; a request that is refused
    (unknown credential or one of another tenant, overlap, times) fails the run with the
    reason.
    """
    if request is not None:
        made = request_reservation(request)
        create_markdown_artifact(
            f"Reservation {made.id}: {made.account} on {made.device} for {made.requested_by}, "
            f"{made.starts_at.isoformat()} to {made.ends_at.isoformat()}",
            key="password-reservation-request", description="The reservation requested")
    events = process_password_reservations()
    publish_table("password-reservation", events,
                  f"{len(events)} reservation start(s)/end(s) processed")
    return events
