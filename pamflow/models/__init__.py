"""The domain store's tables. Import from here: ``from pamflow.models import Device``."""

from ._base import NotStored, row_id, table_of, utcnow
from .activity import AccessGroup, AccessGroupMember, Certificate, Session, SessionEvent, User
from .inventory import (
    Connectivity,
    Credential,
    CredentialHistory,
    CredentialStatus,
    Device,
    HostKey,
    PasswordReservation,
)
from .monitors import Alarm, AlarmDefinition, MaintenanceWindow, MonitorState
from .operations import Operation, OperationKind, OperationState
from .system import AuditLog, Notification, SystemParameter
from .webhooks import WebhookDelivery, WebhookSource

__all__ = [
    "AccessGroup",
    "AccessGroupMember",
    "Alarm",
    "AlarmDefinition",
    "AuditLog",
    "Certificate",
    "Connectivity",
    "Credential",
    "CredentialHistory",
    "CredentialStatus",
    "Device",
    "HostKey",
    "MaintenanceWindow",
    "MonitorState",
    "NotStored",
    "Notification",
    "Operation",
    "OperationKind",
    "OperationState",
    "PasswordReservation",
    "Session",
    "SessionEvent",
    "SystemParameter",
    "User",
    "WebhookDelivery",
    "WebhookSource",
    "row_id",
    "table_of",
    "utcnow",
]
