"""Cloud device import (AWS, GCP, Azure): creating AWS, GCP and Azure device import jobs.

One robot for the three clouds: each cloud account is a block (``blocks/cloud_accounts.py``)
with its provider, scope, filters, tenant and how often it is imported. The robot runs
hourly, imports the accounts that are due, and publishes a table of what each run added,
updated, removed and skipped. Run one account now from the UI with ``account``, or from
the command line: ``pamflow cloud import ACCOUNT``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.utilities.annotations import quote

from pamflow.cloud import ImportResult
from pamflow.errors import PamflowError
from tasks import ran_sync
from tasks.cloud import due_cloud_accounts, list_cloud_instances, write_cloud_devices

CHANGE_ROWS = 500


class CloudImportFailed(PamflowError):
    """At least one cloud account could not be imported (the others were)."""


@flow(name="cloud-device-import")
def cloud_device_import(account: str | None = None, provider: str | None = None,
                        force: bool = False) -> list[dict]:
    """Cloud device import (AWS, GCP, Azure): creating AWS, GCP and Azure device import jobs."""
    logger = get_run_logger()
    plan = due_cloud_accounts(account, provider, force)
    due = plan.due
    progress = ran_sync(create_progress_artifact(0.0, key="cloud-import-progress",
                                                 description=f"{len(due)} cloud account(s) due"),
                        "create_progress_artifact")
    results: list[ImportResult] = []
    failures: dict[str, str] = dict(plan.unreadable)
    for n, item in enumerate(due, 1):
        acct = item.account
        try:
            instances, rejected = list_cloud_instances(acct)
            results.append(write_cloud_devices(acct, quote(instances),  # type: ignore[call-overload]
                                               quote(rejected)))
        except PamflowError as exc:  # CloudError, a vault entry problem
            failures[acct.name] = str(exc)
            logger.error("cloud account %s not imported: %s", acct.name, exc)
        update_progress_artifact(progress, 100.0 * n / len(due),
                                 description=f"{n} of {len(due)} cloud accounts done")
    publish_results(results, failures)
    if not due:
        update_progress_artifact(progress, 100.0, description="no cloud account due")
    if failures:
        raise CloudImportFailed(f"{len(failures)} cloud account(s) not imported: "
                                + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return [r.summary() for r in results]


def publish_results(results: list[ImportResult], failures: dict[str, str]) -> None:
    """One table row per account (added/updated/removed/skipped), a table of the changes,
    and the failures."""
    rows = [{**r.summary(), "failed": ""} for r in results]
    rows += [{"account": name, "provider": "", "tenant": "", "listed": 0, "added": 0,
              "updated": 0, "unchanged": 0, "removed": 0, "skipped": 0, "failed": reason}
             for name, reason in failures.items()]
    if rows:
        create_table_artifact(rows, key="cloud-import-summary",
                              description="Cloud device import: added, updated, removed and "
                                          "skipped devices per account")
    else:
        create_markdown_artifact("# Cloud device import\n\nNo cloud account was due.",
                                 key="cloud-import-summary", description="Cloud device import")
    changes = [{"account": r.account, "action": c.action, "instance": c.external_id,
                "name": c.name, "address": c.address or "", "detail": c.detail}
               for r in results for c in r.changes if c.action != "unchanged"]
    if changes:
        shown = changes[:CHANGE_ROWS]
        more = len(changes) - len(shown)
        create_table_artifact(shown, key="cloud-import-changes",
                              description=f"Cloud device import: {len(changes)} change(s)"
                                          + (f", first {len(shown)} shown" if more else ""))
