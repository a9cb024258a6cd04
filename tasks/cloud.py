"""Prefect tasks for the cloud device import: which accounts are due, list one account,
write its devices. Instances cross task boundaries in memory only (no result persisted,
no input hashed); the listing task's retries come from the SDKs' own retry of throttled
calls, so the tasks themselves are not retried."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pamflow.cloud import CloudAccount, CloudInstance, ImportResult, Rejected, last_import
from pamflow.cloud import list_account as _list_account
from pamflow.cloud import write_devices as _write_devices
from pamflow.errors import PamflowError
from pamflow.models import utcnow


@dataclass(frozen=True)
class DueAccount:
    account: CloudAccount
    reason: str


@dataclass
class DuePlan:
    due: list[DueAccount]
    unreadable: dict[str, str]  # account -> why its block cannot be used


@task(name="due-cloud-accounts", cache_policy=NO_CACHE, persist_result=False)
def due_cloud_accounts(account: str | None, provider: str | None, force: bool) -> DuePlan:
    """The cloud account blocks to import now: ``account`` alone when named (whatever its
    schedule); else every enabled one (of ``provider``) whose last complete import is
    ``every_hours`` old or older (or all of them with ``force``). A block that cannot be
    read (invalid settings) is reported, and the others still run."""
    from blocks.cloud_accounts import account_names, load_account

    logger = get_run_logger()
    names = [account] if account else account_names()
    due: list[DueAccount] = []
    unreadable: dict[str, str] = {}
    for name in names:
        try:
            acct, block = load_account(name)
        except PamflowError as exc:
            unreadable[name] = str(exc)
            continue
        if provider and acct.provider != provider:
            continue
        if account:
            due.append(DueAccount(acct, "asked for"))
            continue
        if not block.enabled:
            logger.info("cloud account %s: disabled", name)
            continue
        last = last_import(name)
        if force or last is None or utcnow() - last >= timedelta(hours=block.every_hours) \
                - timedelta(minutes=5):
            due.append(DueAccount(acct, "forced" if force else
                                  "never imported" if last is None else
                                  f"last import {last:%Y-%m-%d %H:%M} UTC"))
        else:
            logger.info("cloud account %s: imported %s, next after %d h", name,
                        f"{last:%Y-%m-%d %H:%M} UTC", block.every_hours)
    return DuePlan(due, unreadable)


@task(name="list-cloud-instances", task_run_name="list {account.provider} {account.name}",
      cache_policy=NO_CACHE, persist_result=False)
def list_cloud_instances(account: CloudAccount) -> tuple[list[CloudInstance], list[Rejected]]:
    """Every instance of the account, filtered; a failure (refused, throttled past the
    SDK's retries, garbage) fails the task and nothing is written."""
    return _list_account(account)


@task(name="write-cloud-devices", task_run_name="write {account.name}",
      cache_policy=NO_CACHE, persist_result=False)
def write_cloud_devices(account: CloudAccount, instances: list[CloudInstance],
                        rejected: list[Rejected]) -> ImportResult:
    """Upsert the devices and mark the vanished ones removed, in one transaction."""
    return _write_devices(account, instances, rejected)
