"""Notifications: alerts and audit. The configuration auditor, Certificate expiration,
Password change report and Expiration notification robots.

The configuration auditor is a service robot: one flow run an hour watches every
deployment for ``lifetime_s`` (58 minutes), comparing it with its snapshot every ``poll_s``
seconds, so a change reaches syslog within seconds at the cost of one flow run an hour.
The other robots do one pass a day and end. The rules live in ``pamflow.alerts``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.alerts import (
    alert_expiring_certificates,
    read_served_certificates,
    watch_robot_configuration,
)
from tasks.operations import publish_table


@flow(name="configuration-auditor")
def configuration_auditor(lifetime_s: float = 0.0, poll_s: float = 15.0,
                          syslog_block: str = "default") -> list[dict[str, Any]]:
    """Configuration auditor: changing any interval of execution, the number of instances,
    or switching a robot's status is noticed by syslog.

    Each change (robot, field, before, after, who if Prefect knows, when) goes to the audit
    log and, as an RFC 5424 line, to the syslog target block ``syslog_block``.
    """
    return watch_robot_configuration(lifetime_s, poll_s, syslog_block)


@flow(name="certificate-expiration")
def certificate_expiration(tenant: str | None = None, workers: int = 32,
                           timeout: float = 5.0) -> dict[str, int]:
    """Certificate expiration: notify and act under certificates next to expire.

    Reads the certificate each device serves on its TLS ports (without trusting it, its
    issuer recorded), then alerts the certificates in the store and the served ones at 90,
    60, 30, 15, 7, 1 and 0 days before expiry, each once per certificate and threshold.
    """
    scans = read_served_certificates(tenant, workers, timeout)
    alerts = alert_expiring_certificates(tenant)
    failed = [s for s in scans if s.error]
    publish_table("certificate-expiration-ports", scans,
                  f"{len(scans)} TLS port(s) read, {len(failed)} unreadable")
    publish_table("certificate-expiration-alerts", alerts,
                  f"{len(alerts)} certificate expiration alert(s) queued")
    return {"ports": len(scans), "unreadable": len(failed), "alerts": len(alerts)}
