"""The notification catalogue (every notification type, its family and wording) and queueing
a notification for the mail robot.

A robot never sends mail itself: it queues a row; the email sender robot delivers it.
Context values must never hold a secret; ``queue`` refuses keys that look like one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from .errors import PamflowError
from .models import Notification

SECRET_KEYS = ("password", "secret", "passwd", "token", "private_key")


@dataclass(frozen=True)
class NotificationType:
    name: str
    family: str
    description: str


_CATALOGUE = [
    ("Devices", "Lost of connectivity", "Devices that lost connectivity over the configured ports"),
    ("Devices", "Connectivity restored",
     "Devices that recovery connectivity after been flagged as connectivity lost"),
    ("Password Operation", "Activation executed",
     "A credential has been activated into target device by Execution module"),
    ("Password Operation", "Change Executed",
     "A credential has taken its password changed into target device by Execution module"),
    ("Password Operation", "Error on activation",
     "An error occurred when tried to activate into target device by Execution module"),
    ("Password Operation", "Error on change",
     "An error occurred when tried to change password into target device by Execution module"),
    ("Credentials", "Password changed",
     "Some credential has it password changed manually or by Execution module template"),
    ("Credentials", "Password daily summary", "A report with credentials operations summary"),
    ("Credentials", "Password Expired", "A report with credentials with expired password"),
    ("Credentials", "Password confirmed", "A report with credentials with passwords confirmed"),
    ("Credentials", "Invalid password", "A report with credentials with invalid passwords"),
    ("Credentials", "Password change reminder",
     "A credential's password is due to change soon (sapm passwordchangereminderjob)"),
    ("Credentials", "Password reservation", "A future-date password reservation started or ended"),
    ("Audit Trail", "Audit trail",
     "When a major entity is created, updated, or inactivated, a detailed log is registered"),
    ("Monitoring", "CPU Usage - Critical", "CPU is running over 90% usage over 10 minutes"),
    ("Monitoring", "CPU Usage - High", "CPU is running over 70% usage over 10 minutes"),
    ("Monitoring", "Memory Usage - Critical", "RAM is running over 90% usage over 10 minutes"),
    ("Monitoring", "Memory Usage - High", "RAM is running over 70% usage over 10 minutes"),
    ("Monitoring", "Low disk space - High criticality", "Storage is running under 10% of free space"),
    ("Monitoring", "Low disk space - Medium criticality",
     "Storage is running under 20% of free space"),
    ("Monitoring", "Low disk space - Low criticality", "Storage is running under 30% of free space"),
    ("Devices", "Batch import finished", "A spreadsheet import of devices and credentials ended"),
    ("Password Backup", "Backup performed",
     "A privileged information backup has been made using the master key. This backup execution "
     "can be executed automatically by system schedule, or manually by user request"),
    ("Password Backup", "Error on backup",
     "An error occurred during a privileged information backup"),
    ("Master Key", "Failed recovery attempt",
     "When the user tries to recover the backup and an error occurs"),
    ("Master Key", "Successful recovery attempt", "When the user successfully recovered the backup"),
]

CATALOGUE: dict[str, NotificationType] = {
    name: NotificationType(name, family, desc) for family, name, desc in _CATALOGUE
}


class UnknownNotification(PamflowError, KeyError):
    pass


def queue(
    db: Session,
    type_name: str,
    subject: str,
    body: str,
    context: dict | None = None,
    recipients: list[str] | None = None,
) -> Notification:
    """Add a queued notification to ``db`` (the caller commits, so it is atomic with its cause)."""
    kind = CATALOGUE.get(type_name)
    if kind is None:
        raise UnknownNotification(f"notification type {type_name!r} is not in the catalogue")
    context = dict(context or {})
    leaked = [k for k in context if any(s in k.lower() for s in SECRET_KEYS)]
    if leaked:
        raise ValueError(f"notification context must not carry secrets: {', '.join(leaked)}")
    row = Notification(
        type=kind.name,
        family=kind.family,
        subject=subject,
        body=body,
        context=context,
        recipients=list(recipients or []),
    )
    db.add(row)
    return row
