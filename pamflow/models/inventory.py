"""Devices, the credentials on them, their history and the SSH host keys seen."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class Connectivity(StrEnum):
    unknown = "unknown"
    reachable = "reachable"
    unreachable = "unreachable"


class CredentialStatus(StrEnum):
    ok = "ok"  # the recorded secret is the one on the target
    unverified = "unverified"  # a change was applied but not confirmed: reconciliation decides
    invalid = "invalid"  # neither the recorded nor the pending secret logs in
    expired = "expired"  # past its expiry, a change is due


class Device(SQLModel, table=True):
    """A managed target: a server, a directory, a network device."""

    __tablename__ = "device"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "address", name="uq_device_tenant_address"),
        # a cloud instance (or directory computer) is one device per account that imports it
        sa.Index("uq_device_source_external", "tenant", "source", "source_account",
                 "external_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    address: str = Field(index=True)
    platform: str = "linux"  # linux | windows | ldap | network | ...
    ports: list[int] = json_field(default_factory=list)
    site: str | None = None
    tenant: str = "default"
    source: str = "manual"  # manual | import | ldap | aws | gcp | azure
    external_id: str | None = Field(default=None, index=True)
    # the cloud account (or directory) that imports this device; None for manual/spreadsheet
    source_account: str | None = None
    # tags (AWS), labels (GCP) or tags (Azure) as the source reported them
    tags: dict = json_field(default_factory=dict)
    # the instance state the source reported (running, stopped, ...) or "removed" once
    # the instance disappeared from it (the device and its credentials are kept)
    instance_state: str | None = None
    removed_at: datetime | None = None
    maintenance_mode: bool = False
    active: bool = True
    connectivity: str = Connectivity.unknown
    connectivity_detail: str | None = None
    last_seen_at: datetime | None = None
    last_checked_at: datetime | None = None
    # how passwords on this device are changed: ssh | winrm | ldap (None: from platform)
    change_protocol: str | None = None
    # protocol settings that are not secret (winrm transport/scheme, ldap base dn, ...)
    settings: dict = json_field(default_factory=dict)
    # the credential used to change other accounts' passwords (sudo chpasswd, net user ...)
    admin_credential_id: int | None = None
    # the credential used by reconciliation when neither pending nor current logs in
    reconcile_credential_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Credential(SQLModel, table=True):
    """An account on a device, with its secret encrypted by the vault."""

    __tablename__ = "credential"
    __table_args__ = (sa.UniqueConstraint("device_id", "username", name="uq_credential_device_user"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    username: str
    kind: str = "local"  # local | domain | service
    secret: str | None = text_field()  # vault ciphertext (carries its key id)
    secret_version: int = 0
    pending_secret: str | None = text_field()  # write-ahead: new secret before the target has it
    pending_operation_id: int | None = None
    pending_since: datetime | None = None
    # an imported secret that differs from the recorded one: tried by a verify operation,
    # adopted only if it logs in (never pushed to the target)
    candidate_secret: str | None = text_field()
    status: str = Field(default=CredentialStatus.ok, index=True)
    status_detail: str | None = None
    policy: str = "default"  # password policy name (system parameter password_policy.<name>)
    change_interval_days: int | None = None
    auto_change: bool = True
    expires_at: datetime | None = Field(default=None, index=True)
    last_changed_at: datetime | None = None
    last_verified_at: datetime | None = None
    reminder_sent_at: datetime | None = None
    # set when an operation cannot even start for a reason a retry will not fix (a secret
    # that cannot be decrypted, no admin password, no target for the platform); the
    # robots stop queuing work for it until the credential, its device or the device's
    # admin/reconcile credential is changed after ``attention_at``
    attention: str | None = text_field()
    attention_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class CredentialHistory(SQLModel, table=True):
    """Previous secrets, kept encrypted, newest version highest."""

    __tablename__ = "credential_history"

    id: int | None = Field(default=None, primary_key=True)
    credential_id: int = Field(foreign_key="credential.id", index=True)
    version: int
    secret: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    retired_at: datetime = Field(default_factory=utcnow)
    reason: str = "rotated"


class HostKey(SQLModel, table=True):
    """The SSH host key recorded on first contact with a device's port."""

    __tablename__ = "host_key"
    __table_args__ = (sa.UniqueConstraint("device_id", "port", "key_type", name="uq_host_key"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    port: int
    key_type: str
    key_base64: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    fingerprint: str
    first_seen_at: datetime = Field(default_factory=utcnow)


class PasswordReservation(SQLModel, table=True):
    """A future-date reservation of a credential: a change runs when it starts or ends."""

    __tablename__ = "password_reservation"

    id: int | None = Field(default=None, primary_key=True)
    credential_id: int = Field(foreign_key="credential.id", index=True)
    requested_by: str
    starts_at: datetime
    ends_at: datetime
    change_on_start: bool = True
    change_on_end: bool = True
    state: str = "scheduled"  # scheduled | active | finished | cancelled
    note: str | None = text_field()
