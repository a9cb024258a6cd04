"""Secrets the directory robots need, read from pamflow's vault by reference.

A block stores only a *reference*: the device (name or address) and the username of a
credential in pamflow's vault — for a directory, typically the directory registered as an
``ldap`` device and its service account, whose password pamflow may itself rotate. The
secret is decrypted here, in the process that uses it, and never leaves it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .errors import BindSecretMissing

if TYPE_CHECKING:
    from .database import DatabaseSettings
    from .settings import DirectorySettings


def vault_secret(engine: Engine, device: str, username: str, tenant: str, what: str) -> str:
    """The current secret of credential ``username`` on ``device`` (id, name or address) of
    ``tenant``. Raises :class:`BindSecretMissing` naming the reference (never the secret)."""
    from pamflow.inventory import normalize_address
    from pamflow.models import Credential, Device
    from pamflow.vault import VaultError, credential_aad, vault

    ref = f"{username!r} on device {device!r} (tenant {tenant!r})"
    with Session(engine) as db:
        query = select(Device).where(col(Device.tenant) == tenant)
        address = normalize_address(device)
        matches = list(db.exec(query.where(col(Device.name) == device)))
        if not matches and address is not None:
            matches = list(db.exec(query.where(col(Device.address) == address)))
        if len(matches) != 1:
            reason = "no such device" if not matches else "several devices have that name"
            raise BindSecretMissing(f"{what}: the vault reference {ref} does not resolve: {reason}")
        dev = matches[0]
        cred = db.exec(select(Credential).where(col(Credential.device_id) == dev.id,
                                                col(Credential.username) == username)).first()
        if cred is None or not cred.secret:
            raise BindSecretMissing(f"{what}: no secret stored in the vault for {ref}")
        try:
            return vault().decrypt(cred.secret, credential_aad(cred.id, cred.device_id, "secret"))
        except VaultError as exc:
            raise BindSecretMissing(f"{what}: the secret of {ref} cannot be decrypted: {exc}") from None


def bind_password(engine: Engine, settings: DirectorySettings) -> str | None:
    """The directory's bind password from the vault (None: anonymous bind)."""
    if not settings.bind_dn:
        return None
    if not settings.bind_secret_device:
        raise BindSecretMissing(f"directory {settings.name}: bind_dn is set but no vault "
                                "reference (bind_secret_device) names its password")
    return vault_secret(engine, settings.bind_secret_device,
                        settings.bind_secret_username or settings.bind_dn, settings.tenant,
                        f"directory {settings.name}")


def database_password(engine: Engine, settings: DatabaseSettings) -> str | None:
    """The device database's password from the vault (None: none referenced)."""
    from sqlalchemy.engine import make_url

    if not settings.password_device:
        return None
    username = settings.password_username or make_url(settings.url).username
    if not username:
        raise BindSecretMissing(f"device database {settings.name}: password_device is set but "
                                "neither password_username nor the URL names the user")
    return vault_secret(engine, settings.password_device, username, settings.tenant,
                        f"device database {settings.name}")
