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
from .retention import ArchiveBatch, AuditSeal, AuditSealKey, Tenant
from .system import AuditLog, Notification, SystemParameter
from .webhooks import WebhookDelivery, WebhookSource

__all__ = [
    "AccessGroup",
    "AccessGroupMember",
    "ArchiveBatch",
    "AuditLog",
    "AuditSeal",
    "AuditSealKey",
    "Certificate",
    "Connectivity",
    "Credential",
    "CredentialHistory",
    "CredentialStatus",
    "Device",
    "HostKey",
    "NotStored",
    "Notification",
    "Operation",
    "OperationKind",
    "OperationState",
    "PasswordReservation",
    "Session",
    "SessionEvent",
    "SystemParameter",
    "Tenant",
    "User",
    "WebhookDelivery",
    "WebhookSource",
    "row_id",
    "table_of",
    "utcnow",
]
