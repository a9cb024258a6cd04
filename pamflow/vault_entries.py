"""Named vault entries: secrets that belong to an integration, not to a device.

A cloud account's access key pair, a service-account token: such secrets are referenced
*by name* from a Prefect block (whose fields any API caller can read) and kept here,
encrypted by the vault and bound to the entry's name (a ciphertext copied onto another
entry does not open). An entry belongs to one tenant; a robot working for another tenant
cannot open it.

Values are a flat JSON object of strings (``{"access_key_id": ..., "secret_access_key":
...}``); its keys are listed in clear (``fields``) so an operator sees what an entry holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sqlmodel import Session, col, select

from . import audit
from .errors import PamflowError
from .models import VaultEntry, utcnow
from .vault import Vault, vault, vault_entry_aad

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
FIELD_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
MAX_FIELDS = 16
MAX_VALUE = 16 * 1024


class VaultEntryError(PamflowError):
    """A vault entry is missing, belongs to another tenant, or its value is not acceptable.
    The message names the entry, never its value."""


@dataclass(frozen=True)
class EntryInfo:
    """What may be shown of an entry: never its values."""

    name: str
    tenant: str
    kind: str
    fields: list[str]

    def as_dict(self) -> dict:
        return {"name": self.name, "tenant": self.tenant, "kind": self.kind, "fields": self.fields}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
        raise VaultEntryError(f"invalid vault entry name {shown}: use 1-100 characters of "
                              "A-Z a-z 0-9 _ . - (starting with a letter or digit)")
    return name


def check_values(values: object) -> dict[str, str]:
    """A flat object of 1-16 string fields (names ``[A-Za-z0-9_]``, values up to 16 KiB)."""
    if not isinstance(values, dict) or not values:
        raise VaultEntryError("a vault entry is a non-empty JSON object of string fields")
    if len(values) > MAX_FIELDS:
        raise VaultEntryError(f"a vault entry holds at most {MAX_FIELDS} fields")
    for key, value in values.items():
        if not isinstance(key, str) or not FIELD_RE.fullmatch(key):
            raise VaultEntryError(f"invalid field name {str(key)[:40]!r}: use A-Z a-z 0-9 _")
        if not isinstance(value, str) or not value:
            raise VaultEntryError(f"field {key}: the value must be a non-empty string")
        if len(value) > MAX_VALUE:
            raise VaultEntryError(f"field {key}: the value is longer than {MAX_VALUE} characters")
    return dict(values)


def put_entry(db: Session, name: str, values: dict[str, str], *, tenant: str = "default",
              kind: str = "generic", actor: str = "system", box: Vault | None = None) -> EntryInfo:
    """Create or replace entry ``name`` (in ``db``'s transaction; the caller commits).

    Replacing an entry of another tenant is refused."""
    check_name(name)
    clean = check_values(values)
    box = box or vault()
    token = box.encrypt(json.dumps(clean, sort_keys=True), vault_entry_aad(name))
    row = db.exec(select(VaultEntry).where(col(VaultEntry.name) == name)).first()
    if row is not None and row.tenant != tenant:
        raise VaultEntryError(f"vault entry {name} belongs to another tenant")
    action = "vault_entry.replaced" if row is not None else "vault_entry.created"
    if row is None:
        row = VaultEntry(name=name, tenant=tenant, kind=kind, fields=sorted(clean), secret=token)
    else:
        row.kind, row.fields, row.secret, row.updated_at = kind, sorted(clean), token, utcnow()
    db.add(row)
    db.flush()
    audit.record(db, actor, action, "vault_entry", row.id,
                 {"name": name, "tenant": tenant, "kind": kind, "fields": sorted(clean)})
    return EntryInfo(name, tenant, kind, sorted(clean))


def read_entry(db: Session, name: str, *, tenant: str, box: Vault | None = None
               ) -> dict[str, str]:
    """The values of entry ``name`` for ``tenant``; VaultEntryError when it is missing or
    belongs to another tenant (the same message: an entry of another tenant is not shown)."""
    check_name(name)
    row = db.exec(select(VaultEntry).where(col(VaultEntry.name) == name)).first()
    if row is None or row.tenant != tenant:
        raise VaultEntryError(f"no vault entry {name} for tenant {tenant}")
    values = json.loads((box or vault()).decrypt(row.secret, vault_entry_aad(name)))
    if not isinstance(values, dict):
        raise VaultEntryError(f"vault entry {name} does not hold a JSON object")
    return {str(k): str(v) for k, v in values.items()}


def list_entries(db: Session, tenant: str | None = None) -> list[EntryInfo]:
    query = select(VaultEntry).order_by(col(VaultEntry.name))
    if tenant is not None:
        query = query.where(col(VaultEntry.tenant) == tenant)
    return [EntryInfo(r.name, r.tenant, r.kind, list(r.fields)) for r in db.exec(query)]


def remove_entry(db: Session, name: str, *, actor: str = "system") -> bool:
    check_name(name)
    row = db.exec(select(VaultEntry).where(col(VaultEntry.name) == name)).first()
    if row is None:
        return False
    audit.record(db, actor, "vault_entry.removed", "vault_entry", row.id,
                 {"name": name, "tenant": row.tenant})
    db.delete(row)
    return True
