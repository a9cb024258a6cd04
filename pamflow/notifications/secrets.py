"""Secrets of the notification channels (the SMTP password, webhook signing keys), sealed by
pamflow's vault in the store (table ``notification_secret``).

Why the vault and not a ``SecretStr`` field of the SMTP block: Prefect's OSS API hands
block secrets to any API caller (DESIGN.md), and pamflow keeps every secret it holds under
its master key, which never enters Prefect. The SMTP block therefore names the entry
(``password_secret``); ``pamflow notifications secret set NAME`` seals a value read from
standard input (never from the command line).
"""

from __future__ import annotations

import re

from sqlmodel import Session

from ..errors import PamflowError
from ..models import NotificationSecret
from ..models._base import utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_LEN = 4096


class SecretMissing(PamflowError):
    """A channel needs a notification secret that is not stored."""


def aad(name: str) -> bytes:
    return f"pamflow|notification_secret|{name}".encode()


def set_secret(db: Session, name: str, value: str) -> None:
    from ..vault import vault

    if not NAME_RE.match(name or ""):
        raise ValueError("a secret name is 1-128 of A-Z a-z 0-9 . _ -")
    if not value or len(value) > MAX_LEN or "\x00" in value:
        raise ValueError(f"the secret is empty, has a NUL or is longer than {MAX_LEN} characters")
    row = db.get(NotificationSecret, name) or NotificationSecret(name=name, ciphertext="")
    row.ciphertext = vault().encrypt(value, aad(name))
    row.updated_at = utcnow()
    db.add(row)


def get_secret(db: Session, name: str) -> str:
    from ..vault import vault

    row = db.get(NotificationSecret, name)
    if row is None:
        raise SecretMissing(f"notification secret {name!r} is not stored: "
                            f"`pamflow notifications secret set {name}`")
    return vault().decrypt(row.ciphertext, aad(name))


def delete_secret(db: Session, name: str) -> bool:
    row = db.get(NotificationSecret, name)
    if row is None:
        return False
    db.delete(row)
    return True
