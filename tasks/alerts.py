"""Alerts and audit tasks: the configuration auditor's watch over Prefect's deployments,
certificate expiration, the password change report and the expiration notification
(``pamflow.alerts`` wrapped for Prefect).

The artifacts carry robot names, settings, device names, certificate names and counts;
never a secret (none of these robots reads one).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from tasks import ran_sync
from tasks.operations import publish_table

if TYPE_CHECKING:  # imported where used: the flow module stays cheap to import
    from pamflow.alerts.certificates import ExpirationAlert, PortScan
    from pamflow.alerts.config_audit import DeploymentEvent, RobotConfig
    from pamflow.alerts.reports import ExpirationReport, PasswordChangeReport

log = logging.getLogger("pamflow.alerts")
PAGE = 200
EVENTS_PAGE = 50  # the most /events/filter answers at once
EVENT_NAME = "prefect.deployment.updated"
EVENT_MARGIN = timedelta(minutes=2)


# ---------------------------------------------------------------- configuration auditor
def read_robot_configs(client: Any) -> list[RobotConfig]:
    """Every deployment on the Prefect server, as the settings the auditor watches."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId
    from prefect.client.schemas.sorting import DeploymentSort

    from pamflow.alerts.config_audit import robot_config

    deployments: list[Any] = []
    while True:
        page = client.read_deployments(limit=PAGE, offset=len(deployments),
                                       sort=DeploymentSort.NAME_ASC)
        deployments.extend(page)
        if len(page) < PAGE:
            break
    flow_ids = sorted({d.flow_id for d in deployments}, key=str)
    names: dict[Any, str] = {}
    for start in range(0, len(flow_ids), PAGE):
        chunk = flow_ids[start:start + PAGE]
        for f in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=chunk)),
                                   limit=PAGE):
            names[f.id] = f.name
    return [robot_config(d.model_dump(mode="json"), names.get(d.flow_id, "?"))
            for d in deployments]


def read_deployment_events(client: Any, since: datetime | None,
                           until: datetime) -> list[DeploymentEvent]:
    """The ``prefect.deployment.updated`` events that occurred in ``[since, until]``."""
    from pamflow.alerts.config_audit import deployment_event

    since = since or until - timedelta(hours=1)
    body = {"filter": {"occurred": {"since": since.isoformat(), "until": until.isoformat()},
                       "event": {"name": [EVENT_NAME]}, "order": "ASC"},
            "limit": EVENTS_PAGE}
    http = client._client  # the client's own authenticated httpx client
    answer = http.post("/events/filter", json=body)
    answer.raise_for_status()
    page = answer.json()
    found = []
    for _ in range(100):
        for raw in page.get("events") or []:
            ev = deployment_event(raw)
            if ev is not None:
                found.append(ev)
        nxt = page.get("next_page")
        if not nxt:
            break
        answer = http.get(nxt)
        answer.raise_for_status()
        page = answer.json()
    return found


def _audit_pass(client: Any, engine: Any, syslog_block: str
                ) -> tuple[list[dict[str, Any]], int, str | None]:
    """One comparison of every deployment with its snapshot, then the syslog backlog:
    (changes recorded, lines still waiting for syslog, why they wait)."""
    from blocks.syslog_target import load_syslog_target
    from pamflow.alerts.config_audit import audit_configuration, deliver_to_syslog, events_since

    until = datetime.now(UTC)
    since = events_since(engine)  # re-read a margin: events are stored asynchronously
    events = read_deployment_events(client, since and since - EVENT_MARGIN, until)
    robots = read_robot_configs(client)
    done = audit_configuration(engine, robots, events, events_until=until)
    target = load_syslog_target(syslog_block)
    if target is None:
        log.warning("no syslog target block %r: configuration changes are kept until one "
                    "is configured", syslog_block)
    delivery = deliver_to_syslog(engine, target)
    rows = done.rows()
    if rows:
        publish_table("configuration-auditor", rows,
                      f"{len(rows)} configuration change(s) of robots; syslog: "
                      f"{delivery.sent} sent, {delivery.pending} waiting"
                      + (f" ({delivery.error})" if delivery.error else ""))
    return rows, delivery.pending, delivery.error


@task(name="watch-robot-configuration", retries=1, retry_delay_seconds=10)
def watch_robot_configuration(until_epoch: float, poll_s: float,
                              syslog_block: str) -> list[dict[str, Any]]:
    """Compare every deployment with its snapshot every ``poll_s`` seconds until
    ``until_epoch`` (one pass when it is past; a retry keeps the same end); record changes
    and send them to syslog."""
    import httpx
    from prefect.client.orchestration import get_client

    from pamflow.db import store

    engine = store()
    changes: list[dict[str, Any]] = []
    passes = failures = 0
    waiting, problem = 0, None
    with get_client(sync_client=True) as client:
        while True:
            try:
                rows, waiting, problem = _audit_pass(client, engine, syslog_block)
                changes.extend(rows)
                passes += 1
            except (httpx.HTTPError, OSError) as exc:
                # Prefect's API restarting, say: the next pass catches up from the snapshots
                failures += 1
                log.warning("configuration auditor pass failed: %s", exc)
                if time.time() + poll_s >= until_epoch and passes == 0:
                    raise
            if time.time() + poll_s >= until_epoch:
                break
            time.sleep(poll_s)
    if not changes:
        create_markdown_artifact(
            f"**Configuration auditor**: {passes} pass(es), no change to any robot's interval, "
            f"instances or status; syslog: {waiting} line(s) waiting"
            + (f" ({problem})" if problem else "")
            + (f"; {failures} pass(es) failed" if failures else "") + ".",
            key="configuration-auditor", description="Configuration auditor pass")
    return changes


# ---------------------------------------------------------------- certificate expiration
@task(name="read-served-certificates", retries=1, retry_delay_seconds=10)
def read_served_certificates(tenant: str | None, workers: int,
                             timeout: float) -> list[PortScan]:
    """Read the certificate every active device serves on its TLS ports (a progress
    artifact follows the reads)."""
    from pamflow.alerts.certificates import scan_served_certificates
    from pamflow.db import store

    artifact = ran_sync(create_progress_artifact(
        0.0, key="certificate-expiration-progress",
        description="Certificate expiration: reading TLS ports"), "create_progress_artifact")

    def progress(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / total,
                                 description=f"Certificate expiration: {done} of {total} "
                                             "TLS ports read")

    scans = scan_served_certificates(store(), tenant, workers=workers, timeout=timeout,
                                     progress=progress)
    if not scans:
        update_progress_artifact(artifact, 100.0, description="Certificate expiration: no "
                                                              "TLS port to read")
    return scans


@task(name="alert-expiring-certificates", retries=1, retry_delay_seconds=10)
def alert_expiring_certificates(tenant: str | None) -> list[ExpirationAlert]:
    """Queue the alerts of certificates that reached a threshold (once each)."""
    from pamflow.alerts.certificates import alert_expiring_certificates as alert
    from pamflow.db import store

    return alert(store(), tenant=tenant)


# ---------------------------------------------------------------- daily reports
@task(name="password-change-report", retries=1, retry_delay_seconds=10)
def report_password_changes(day: date, tenant: str | None) -> PasswordChangeReport:
    """Summarise the day's password changes and failures; queue one report per tenant."""
    from pamflow.alerts.reports import password_change_report
    from pamflow.db import store

    return password_change_report(store(), day, tenant)


@task(name="expiration-notification", retries=1, retry_delay_seconds=10)
def notify_expirations(password_days: int | None, certificate_days: int | None,
                       tenant: str | None) -> ExpirationReport:
    """List passwords and certificates close to expiry; queue one notice per tenant."""
    from pamflow.alerts.reports import expiration_notification
    from pamflow.db import store

    return expiration_notification(store(), password_days=password_days,
                                   certificate_days=certificate_days, tenant=tenant)
