"""User lifecycle tasks: ``pamflow.users`` wrapped for Prefect."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pamflow.users import LockNotice, UserChange


def _store():
    from pamflow.db import store

    return store()


def _settings(batch_size: int):
    from sqlmodel import Session

    from pamflow.users import settings_from_parameters

    with Session(_store()) as db:
        return settings_from_parameters(db, batch_size)


@task(name="check-user-eligibility", cache_policy=NO_CACHE)
def check_user_eligibility(batch_size: int = 500) -> list[UserChange]:
    from pamflow.users import check_eligibility

    return check_eligibility(_store(), _settings(batch_size))


@task(name="notify-users-before-lock", cache_policy=NO_CACHE)
def notify_users_before_lock(batch_size: int = 500) -> list[LockNotice]:
    from pamflow.users import notify_before_lock

    return notify_before_lock(_store(), _settings(batch_size))
