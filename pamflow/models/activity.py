"""Sessions, certificates, users and access groups: the records robots read and maintain."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, text_field, utcnow


class Certificate(SQLModel, table=True):
    """A certificate kept in the store (``source`` "store") or read from a device's TLS port
    by the certificate expiration robot (``source`` "served", one row per device and port)."""

    __tablename__ = "certificate"
    __table_args__ = (sa.UniqueConstraint("source", "device_id", "port",
                                          name="uq_certificate_served_port"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: int | None = Field(default=None, foreign_key="device.id", index=True)
    common_name: str
    serial: str | None = None
    issuer: str | None = None
    not_before: datetime | None = None
    not_after: datetime = Field(index=True)
    alerts_sent: list[int] = json_field(default_factory=list)  # day thresholds already notified
    created_at: datetime = Field(default_factory=utcnow)
    tenant: str = Field(default="default", sa_column_kwargs={"server_default": "default"})
    source: str = Field(default="store", sa_column_kwargs={"server_default": "store"})
    port: int | None = None  # the TLS port it was served on (served certificates)
    fingerprint: str | None = None  # SHA-256 of the DER certificate, hex
    self_signed: bool | None = None
    last_seen_at: datetime | None = None


class Session(SQLModel, table=True):
    """A proxy session of a user on a device."""

    __tablename__ = "session"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int | None = Field(default=None, foreign_key="pam_user.id", index=True)
    device_id: int | None = Field(default=None, foreign_key="device.id", index=True)
    credential_id: int | None = Field(default=None, foreign_key="credential.id")
    protocol: str = "ssh"
    source_ip: str | None = None
    status: str = Field(default="active", index=True)  # active | finished | failed
    started_at: datetime = Field(default_factory=utcnow, index=True)
    last_activity_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    risk_score: int = 0
    text_indexed_at: datetime | None = None


class SessionEvent(SQLModel, table=True):
    __tablename__ = "session_event"

    id: int | None = Field(default=None, primary_key=True)
    session_id: int = Field(foreign_key="session.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    kind: str  # input | output | command | file | ...
    data: str | None = text_field()


class User(SQLModel, table=True):
    """A PAM user (an operator who requests credentials and sessions)."""

    __tablename__ = "pam_user"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(sa_column=sa.Column(sa.String, unique=True, nullable=False))
    email: str | None = None
    display_name: str | None = None
    source: str = "local"  # local | ldap
    external_id: str | None = Field(default=None, index=True)  # entryUUID / objectGUID
    # active | locked | suspended | expired | inactive | disabled (left the directory's scope,
    # or disabled in the directory: never deleted, so its history stays)
    status: str = "active"
    temporary_until: datetime | None = None
    last_login_at: datetime | None = None
    locked_until: datetime | None = None  # a temporary lock: unlocked after this time
    locked_reason: str | None = None
    lock_warned_at: datetime | None = None  # the notification before lock was queued
    created_at: datetime = Field(default_factory=utcnow)
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False,
                                                               server_default="default"))
    # the LdapDirectory block that manages this user (None: a local user)
    directory: str | None = Field(default=None, index=True)
    dn: str | None = text_field()
    synced_at: datetime | None = None
    disabled_at: datetime | None = None
    # the access compiled from the rules of the user's access groups (access groups processing)
    granted: dict = json_field()
    granted_at: datetime | None = None


class AccessGroup(SQLModel, table=True):
    __tablename__ = "access_group"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String, unique=True, nullable=False))
    description: str | None = None
    # what membership grants, compiled per user by access groups processing, e.g.
    # {"devices": ["web-*"], "sites": ["paris"], "protocols": ["ssh"]}
    rules: dict = json_field()
    source: str = "local"  # local | ldap
    directory: str | None = Field(default=None, index=True)
    external_id: str | None = Field(default=None, index=True)
    dn: str | None = text_field()
    tenant: str = Field(default="default", sa_column=sa.Column(sa.String(255), nullable=False,
                                                               server_default="default"))
    active: bool = True
    synced_at: datetime | None = None


class AccessGroupMember(SQLModel, table=True):
    __tablename__ = "access_group_member"

    group_id: int = Field(foreign_key="access_group.id", primary_key=True)
    user_id: int = Field(foreign_key="pam_user.id", primary_key=True)


class DirectorySyncState(SQLModel, table=True):
    """Where the last run of a directory robot stopped: the incremental mark
    (``modifyTimestamp`` on OpenLDAP, ``uSNChanged`` on AD) per directory and kind."""

    __tablename__ = "directory_sync_state"

    key: str = Field(primary_key=True)  # "<directory>:users" | "<directory>:computers"
    mark: str | None = None
    last_run_at: datetime | None = None
    last_full_at: datetime | None = None
    last_result: dict = json_field()
