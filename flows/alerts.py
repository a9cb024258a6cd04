"""Notifications: alerts and audit. The configuration auditor, Certificate expiration,
Password change report and Expiration notification robots.

The configuration auditor is a service robot: one flow run an hour watches every
deployment for ``lifetime_s`` (58 minutes), comparing it with its snapshot every ``poll_s``
seconds, so a change reaches syslog within seconds at the cost of one flow run an hour.
The other robots do one pass a day and end. The rules live in ``pamflow.alerts``.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import flow

from tasks.alerts import (
    alert_expiring_certificates,
    notify_expirations,
    read_served_certificates,
    report_password_changes,
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
    return watch_robot_configuration(time.time() + lifetime_s, poll_s, syslog_block)


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


@flow(name="password-change-report")
def password_change_report(day: date | None = None, tenant: str | None = None) -> dict[str, Any]:
    """Password change report: notify configured users about occurred password changes.

    The daily summary of the previous UTC day (or ``day``): passwords changed and
    activated, and the failures with their reasons; one "Password daily summary" per tenant,
    queued once, and a table artifact.
    """
    day = day or (datetime.now(UTC) - timedelta(days=1)).date()
    report = report_password_changes(day, tenant)
    publish_table("password-change-report", report.tenants,
                  f"Password changes of {report.day}: "
                  f"{sum(t.changed for t in report.tenants)} changed, "
                  f"{sum(t.change_failed for t in report.tenants)} failed")
    if report.failures:
        publish_table("password-change-failures", report.failures,
                      f"{len(report.failures)} password operation failure(s) on {report.day}")
    return {"day": report.day, "tenants": len(report.tenants),
            "notified": sum(t.notified for t in report.tenants),
            "failures": len(report.failures)}


@flow(name="expiration-notification")
def expiration_notification(password_days: int | None = None,
                            certificate_days: int | None = None,
                            tenant: str | None = None) -> dict[str, Any]:
    """Expiration notification: notify configured users about passwords and certificates
    close to expiration.

    One "Expiration notification" per tenant and day listing the passwords due within
    ``password_days`` (system parameter, 7) and certificates within ``certificate_days``
    (30).
    """
    report = notify_expirations(password_days, certificate_days, tenant)
    publish_table("expiration-notification", report.items,
                  f"{len(report.items)} password(s)/certificate(s) close to expiration; "
                  f"{len(report.notified)} tenant(s) notified")
    return {"day": report.day, "items": len(report.items), "notified": len(report.notified)}
