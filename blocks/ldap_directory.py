"""An LDAP/AD directory as a Prefect block, edited in the UI (Blocks > LDAP directory).

Read by the directory robots (LDAP/AD synchronization, LDAP device import). Nothing secret
is stored here: the bind password lives in pamflow's vault, as the credential
``bind_secret_username`` (default: ``bind_dn``) of the device ``bind_secret_device`` — for
instance the directory itself, registered as an ``ldap`` device whose service account
pamflow rotates. Anyone who can call Prefect's API can read and edit a block, so a block
never holds a password.

TLS: ``ldaps://`` speaks TLS from the first byte; ``ldap://`` uses StartTLS. The
certificate is verified unless ``verify_certificate`` is off. Cleartext (``tls: none``)
is an explicit opt-in, warned on every connection.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, ValidationError

from pamflow.directory import DirectorySettings

BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class LdapDirectoryBlock(Block):
    """Where a directory is, how to reach it safely, what to read from it, and how often a
    full run replaces the incremental ones."""

    _block_type_name = "LDAP directory"
    _block_type_slug = "pamflow-ldap-directory"
    _description = ("pamflow: an LDAP/AD directory synchronised into users, access groups and "
                    "devices. The bind password is a vault reference, never stored here.")

    url: str = Field(description="ldaps://host:636 (TLS) or ldap://host:389 (StartTLS).")
    kind: Literal["openldap", "ad"] = Field(
        default="openldap", description="openldap (modifyTimestamp, entryUUID) or ad "
                                        "(uSNChanged, objectGUID, userAccountControl).")
    tls: Literal["ldaps", "starttls", "none"] | None = Field(
        default=None, description="Empty: from the URL. none = cleartext (explicit opt-in, "
                                  "warned on every connection).")
    verify_certificate: bool = Field(default=True, description="Check the certificate chain "
                                                               "and host name (keep on).")
    ca_file: str | None = Field(default=None, description="A PEM CA bundle trusted for the "
                                                          "directory's certificate.")
    bind_dn: str | None = Field(default=None, description="The DN to bind as (empty: anonymous).")
    bind_secret_device: str | None = Field(
        default=None, description="Vault reference: the device (name or address) holding the "
                                  "bind credential.")
    bind_secret_username: str | None = Field(
        default=None, description="Vault reference: the credential's username (default: "
                                  "bind_dn).")
    tenant: str = Field(default="default", description="The tenant users and devices go to.")
    user_base: str | None = Field(default=None, description="Where users are (base DN).")
    user_filter: str | None = Field(default=None, description="Which entries are users "
                                                              "(default by kind).")
    group_base: str | None = Field(default=None, description="Where groups are (empty: no "
                                                             "groups are read).")
    group_filter: str | None = None
    computer_base: str | None = Field(default=None, description="Where computers are (LDAP "
                                                                "device import).")
    computer_filter: str | None = None
    user_attributes: dict[str, str] = Field(
        default_factory=dict, description="Overrides of username / email / display_name / "
                                          "account_control → attribute.")
    group_attributes: dict[str, str] = Field(
        default_factory=dict, description="Overrides of name / description / member.")
    computer_attributes: dict[str, str] = Field(
        default_factory=dict, description="Overrides of name / address / operating_system.")
    default_platform: str = Field(default="linux", description="Platform of a computer whose "
                                                               "operating system says nothing.")
    page_size: int = Field(default=500, ge=1, le=10000)
    timeout: float = Field(default=30.0, gt=0, le=600)
    full_every_hours: float = Field(default=24.0, ge=0, description="Schedule: an incremental "
                                    "run becomes a full one when the last full run is older.")
    max_value_length: int = Field(default=1024, ge=1, le=1_000_000)
    departures_every_run: bool = Field(
        default=True, description="Incremental runs also list the ids in scope, so users who "
        "left are disabled at once (off: only full runs notice them; faster on huge "
        "directories).")
    clock_skew_seconds: float = Field(
        default=60.0, ge=0, le=86400, description="How far the directory's clock may be ahead "
        "of pamflow's: bounds when an incremental mark's second is known to be over.")

    def to_settings(self, name: str) -> DirectorySettings:
        values: dict[str, Any] = {k: getattr(self, k) for k in DirectorySettings.__dataclass_fields__
                                  if k != "name" and hasattr(self, k)}
        return DirectorySettings(name=name, **values).check()


def load_directory(name: str) -> DirectorySettings:
    """The settings saved as LDAP directory block ``name``; DirectorySettingsError when there
    is no such block (or it cannot be read), naming what to do."""
    return load_settings_block(LdapDirectoryBlock, "LDAP directory", "LDAP directory", name)


def load_settings_block(cls: Any, label: str, menu: str, name: str) -> Any:
    """The settings of the ``cls`` block saved as ``name`` (``label`` in messages, ``menu``
    in the UI's Blocks menu): a clear DirectorySettingsError for a bad name, bad settings or
    an unreachable API, DirectoryNotConfigured when there is no such block."""
    from pamflow.directory import DirectoryNotConfigured, DirectorySettingsError

    if not isinstance(name, str) or not BLOCK_NAME.fullmatch(name):
        raise DirectorySettingsError(f"{str(name)[:40]!r} is not a block name: use 1-63 lowercase "
                                     "letters, digits and dashes")
    try:
        loaded: Any = cls.load(name, validate=True)
    except ValidationError as exc:
        raise DirectorySettingsError(f"{label} block {name!r} has invalid settings: "
                                     f"{exc.error_count()} error(s), first: "
                                     f"{exc.errors()[0].get('loc')} {exc.errors()[0].get('msg')}"
                                     ) from None
    except ValueError as exc:
        raise DirectoryNotConfigured(f"no {label} block named {name!r}: create one in the "
                                     f"Prefect UI (Blocks > {menu}) ({str(exc)[:120]})"
                                     ) from None
    except Exception as exc:  # noqa: BLE001 - the API failed: say so, in one line
        raise DirectorySettingsError(f"cannot read {label} block {name!r} from the Prefect API: "
                                     f"{type(exc).__name__}: {str(exc)[:160]}") from None
    if not isinstance(loaded, cls):  # a coroutine inside an event loop
        getattr(loaded, "close", lambda: None)()
        raise RuntimeError(f"{label} blocks cannot be loaded inside an event loop")
    return loaded.to_settings(name)
