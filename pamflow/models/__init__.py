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
from .operations import Operation, OperationKind, OperationState
from .system import (
    AuditLog,
    MfaToken,
    Notification,
    NotificationMessage,
    NotificationRoute,
    NotificationSecret,
    SystemParameter,
)
from .webhooks import WebhookDelivery, WebhookSource

__all__ = [
    "AccessGroup",
    "AccessGroupMember",
    "AuditLog",
    "Certificate",
    "Connectivity",
    "Credential",
    "CredentialHistory",
    "CredentialStatus",
    "Device",
    "HostKey",
    "MfaToken",
    "NotStored",
    "Notification",
    "NotificationMessage",
    "NotificationRoute",
    "NotificationSecret",
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
