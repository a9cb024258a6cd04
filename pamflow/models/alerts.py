"""Alerts and configuration audit: deployment snapshots and the configuration changes seen
in them, certificate expiration alerts sent, and the marks of reports already sent."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class DeploymentSnapshot(SQLModel, table=True):
    """The last known configuration of one robot (a Prefect deployment): what the
    configuration auditor compares the deployment with on its next pass."""

    __tablename__ = "deployment_snapshot"

    deployment_id: str = Field(primary_key=True)
    robot: str = Field(index=True)  # the deployment's name
    flow_name: str
    snapshot: dict = json_field()  # {"schedule": [...], "concurrency_limit": 1, "paused": false, ...}
    seen_at: datetime = Field(default_factory=utcnow)


class ConfigChange(SQLModel, table=True):
    """One change of a robot's interval, instances or status, and whether syslog has it."""

    __tablename__ = "config_change"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)  # when it happened (best known)
    detected_at: datetime = Field(default_factory=utcnow)
    robot: str = Field(index=True)
    flow_name: str | None = None
    deployment_id: str = Field(index=True)
    field: str  # schedule | concurrency_limit | collision_strategy | paused | deployment
    before: str | None = text_field()
    after: str | None = text_field()
    who: str | None = None
    source: str = "snapshot"  # snapshot | event (prefect.deployment.updated)
    syslog_state: str = Field(default="pending", index=True)  # pending | sent
    syslog_attempts: int = 0
    syslog_error: str | None = text_field()
    syslog_sent_at: datetime | None = None


class CertificateAlert(SQLModel, table=True):
    """An expiration alert sent for one certificate, threshold and expiry date (a renewed
    certificate, with a new expiry, is alerted again)."""

    __tablename__ = "certificate_alert"
    __table_args__ = (sa.UniqueConstraint("certificate_id", "threshold_days", "not_after",
                                          name="uq_certificate_alert"),)

    id: int | None = Field(default=None, primary_key=True)
    certificate_id: int = Field(foreign_key="certificate.id", index=True)
    threshold_days: int
    not_after: datetime
    days_left: int
    sent_at: datetime = Field(default_factory=utcnow)
    notification_id: int | None = None


class ReportMark(SQLModel, table=True):
    """A periodic report already queued (kind and period), so a re-run sends nothing twice."""

    __tablename__ = "report_mark"

    kind: str = Field(primary_key=True)
    period: str = Field(primary_key=True)  # e.g. "2026-11-28" or "2026-11-28/default"
    sent_at: datetime = Field(default_factory=utcnow)
    notification_id: int | None = None
