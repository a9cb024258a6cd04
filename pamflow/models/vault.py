"""Named vault entries: secrets that belong to no device (a cloud account's access key)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ._base import json_field, utcnow


class VaultEntry(SQLModel, table=True):
    """A named secret, referenced by name from a Prefect block (never copied into one).

    ``secret`` is the vault ciphertext of a JSON object (e.g. ``access_key_id`` and
    ``secret_access_key``), bound to the entry's name; ``fields`` lists its keys, so an
    operator can see what an entry holds without opening it.
    """

    __tablename__ = "vault_entry"
    __table_args__ = (sa.UniqueConstraint("name", name="uq_vault_entry_name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str
    tenant: str = "default"
    kind: str = "generic"  # aws-access-key | gcp-token | azure-token | generic ...
    fields: list[str] = json_field(default_factory=list)
    secret: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
