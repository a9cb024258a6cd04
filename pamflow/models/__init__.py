"""The domain store's tables. Import from here: ``from pamflow.models import Device``."""

from ._base import NotStored, row_id, table_of, utcnow
from .activity import (
    AccessGroup,
    AccessGroupMember,
    Certificate,
    DirectorySyncState,
    Session,
    SessionEvent,
    User,
)
from .alerts import CertificateAlert, ConfigChange, DeploymentSnapshot, ReportMark
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
from .retention import ArchiveBatch, AuditSeal, AuditSealKey, Tenant
from .system import (
    AuditLog,
    DutyState,
    MfaToken,
    Notification,
    NotificationMessage,
    NotificationRoute,
    NotificationSecret,
    SystemParameter,
)
from .vault import VaultEntry
from .webhooks import WebhookDelivery, WebhookSource

__all__ = [
    "AccessGroup",
    "AccessGroupMember",
    "ArchiveBatch",
    "Alarm",
    "AlarmDefinition",
    "AuditLog",
    "AuditSeal",
    "AuditSealKey",
    "Certificate",
    "CertificateAlert",
    "ConfigChange",
    "Connectivity",
    "Credential",
    "CredentialHistory",
    "CredentialStatus",
    "DeploymentSnapshot",
    "Device",
    "DutyState",
    "DirectorySyncState",
    "HostKey",
    "MaintenanceWindow",
    "MonitorState",
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
    "ReportMark",
    "Session",
    "SessionEvent",
    "SystemParameter",
    "Tenant",
    "User",
    "VaultEntry",
    "WebhookDelivery",
    "WebhookSource",
    "row_id",
    "table_of",
    "utcnow",
]
