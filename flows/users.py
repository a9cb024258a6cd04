"""The user lifecycle robots of the job scheduler (seed 001): user eligibility check and
user notification before lock. The rules live in ``pamflow.users``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from tasks.operations import publish_table
from tasks.users import check_user_eligibility, notify_users_before_lock


@flow(name="user-eligibility-check")
def user_eligibility_check(batch_size: int = 500) -> list[dict]:
    """User eligibility check: checks local users to lock inactive users and expired
    temporary users, and unlock temporarily locked users (each change audited)."""
    changes = check_user_eligibility(batch_size)
    publish_table("user-eligibility-check", changes,
                  f"{sum(c.change == 'locked' for c in changes)} inactive user(s) locked, "
                  f"{sum(c.change == 'expired' for c in changes)} temporary user(s) expired, "
                  f"{sum(c.change == 'unlocked' for c in changes)} unlocked")
    return [asdict(c) for c in changes]


@flow(name="user-notification-before-lock")
def user_notification_before_lock(batch_size: int = 500) -> list[dict]:
    """User notification before lock: notifying inactive users before lock (and temporary
    users before they expire), by queuing the catalogue notification."""
    notices = notify_users_before_lock(batch_size)
    rows = [{**asdict(n), "lock_at": n.lock_at.isoformat()} for n in notices]
    publish_table("user-notification-before-lock", rows,
                  f"{sum(n.notified for n in notices)} user(s) notified before lock, "
                  f"{sum(not n.notified for n in notices)} without an e-mail address")
    return rows
