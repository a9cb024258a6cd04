"""A directory's settings, as the robots use them (the Prefect block converts to this).

Transport security: ``ldaps://`` URLs speak TLS from the first byte; ``ldap://`` URLs use
StartTLS unless ``tls`` is ``none`` — cleartext, an explicit opt-in warned on every
connection. The certificate is verified (chain to ``ca_file`` or the system's CAs, and the
host name) unless ``verify_certificate`` is False, also warned on every connection.

Kinds: ``openldap`` (incremental by ``modifyTimestamp``, ids from ``entryUUID``) and ``ad``
(incremental by ``uSNChanged``, ids from ``objectGUID``, disabled accounts from
``userAccountControl``). Each kind has default filters and attribute mappings; the
settings override them key by key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import DirectorySettingsError

KINDS = ("openldap", "ad")
TLS_MODES = ("ldaps", "starttls", "none")
MAX_FILTER = 4096

DEFAULTS: dict[str, dict] = {
    "openldap": {
        "user_filter": "(objectClass=inetOrgPerson)",
        "group_filter": "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
        "computer_filter": "(|(objectClass=ipHost)(objectClass=device))",
        "id_attribute": "entryUUID",
        "mark_attribute": "modifyTimestamp",
        "user_attributes": {"username": "uid", "email": "mail", "display_name": "cn"},
        "group_attributes": {"name": "cn", "description": "description", "member": "member"},
        "computer_attributes": {"name": "cn", "address": "ipHostNumber",
                                "operating_system": "description"},
    },
    "ad": {
        "user_filter": "(&(objectCategory=person)(objectClass=user))",
        "group_filter": "(objectClass=group)",
        "computer_filter": "(objectClass=computer)",
        "id_attribute": "objectGUID",
        "mark_attribute": "uSNChanged",
        "user_attributes": {"username": "sAMAccountName", "email": "mail",
                            "display_name": "displayName",
                            "account_control": "userAccountControl"},
        "group_attributes": {"name": "cn", "description": "description", "member": "member"},
        "computer_attributes": {"name": "cn", "address": "dNSHostName",
                                "operating_system": "operatingSystem"},
    },
}
_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]{0,127}|\d+(?:\.\d+)+)$")


@dataclass(frozen=True)
class DirectorySettings:
    """Where the directory is, how to reach it safely, what to read from it."""

    name: str
    url: str
    kind: str = "openldap"
    tls: str | None = None  # None: from the URL (ldaps:// → ldaps, ldap:// → starttls)
    verify_certificate: bool = True
    ca_file: str | None = None
    bind_dn: str | None = None  # None: anonymous
    bind_secret_device: str | None = None  # the vault reference of the bind password
    bind_secret_username: str | None = None  # default: bind_dn
    tenant: str = "default"
    user_base: str | None = None
    user_filter: str | None = None
    group_base: str | None = None
    group_filter: str | None = None
    computer_base: str | None = None
    computer_filter: str | None = None
    user_attributes: dict[str, str] = field(default_factory=dict)
    group_attributes: dict[str, str] = field(default_factory=dict)
    computer_attributes: dict[str, str] = field(default_factory=dict)
    default_platform: str = "linux"
    page_size: int = 500
    timeout: float = 30.0
    full_every_hours: float = 24.0  # an incremental run older than this many hours becomes full
    max_value_length: int = 1024  # a longer mapped value rejects the entry, with the reason
    # how far the directory's clock may be ahead of this host's: a modifyTimestamp mark
    # older than this when a run began is settled (the next run reads strictly after it)
    clock_skew_seconds: float = 60.0
    # incremental runs also list the ids in scope (one attribute per entry) to disable who
    # left at once; False leaves that to the full runs (faster on very large directories)
    departures_every_run: bool = True

    # -- derived -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (636 if parts.scheme.lower() == "ldaps" else 389)

    @property
    def tls_mode(self) -> str:
        if self.tls:
            return self.tls
        return "ldaps" if urlsplit(self.url).scheme.lower() == "ldaps" else "starttls"

    def default(self, key: str) -> str:
        return str(DEFAULTS[self.kind][key])

    def mapping(self, kind: str) -> dict[str, str]:
        """The attribute mapping for ``users``, ``groups`` or ``computers`` (defaults first)."""
        defaults = dict(DEFAULTS[self.kind][f"{kind[:-1]}_attributes"])
        defaults.update(getattr(self, f"{kind[:-1]}_attributes") or {})
        return {k: v for k, v in defaults.items() if v}

    def filter_for(self, kind: str) -> str:
        return getattr(self, f"{kind[:-1]}_filter") or self.default(f"{kind[:-1]}_filter")

    def base_for(self, kind: str) -> str:
        base = getattr(self, f"{kind[:-1]}_base")
        if not base:
            raise DirectorySettingsError(f"directory {self.name}: no {kind[:-1]}_base is set: "
                                         f"say where the {kind} are")
        return base

    # -- validation ----------------------------------------------------------------------
    def check(self) -> DirectorySettings:
        """These settings, or DirectorySettingsError naming the field that is wrong."""
        where = f"directory {self.name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.name or ""):
            raise DirectorySettingsError(f"directory name {str(self.name)[:40]!r}: use 1-63 "
                                         "letters, digits, '.', '_' or '-'")
        if self.kind not in KINDS:
            raise DirectorySettingsError(f"{where}: kind must be one of {', '.join(KINDS)}, "
                                         f"not {str(self.kind)[:20]!r}")
        parts = urlsplit(self.url or "")
        if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
            raise DirectorySettingsError(f"{where}: url must be ldaps://host[:port] or "
                                         f"ldap://host[:port], not {str(self.url)[:80]!r}")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise DirectorySettingsError(f"{where}: url has an invalid port") from None
        if self.tls is not None and self.tls not in TLS_MODES:
            raise DirectorySettingsError(f"{where}: tls must be one of {', '.join(TLS_MODES)}")
        if parts.scheme.lower() == "ldaps" and self.tls_mode != "ldaps":
            raise DirectorySettingsError(f"{where}: an ldaps:// url speaks TLS already; tls "
                                         f"{self.tls!r} contradicts it")
        if parts.scheme.lower() == "ldap" and self.tls_mode == "ldaps":
            raise DirectorySettingsError(f"{where}: tls ldaps needs an ldaps:// url")
        if self.bind_dn and not self.bind_secret_device:
            raise DirectorySettingsError(f"{where}: bind_dn is set but bind_secret_device is "
                                         "not: name the vault credential holding its password")
        for attr in ("user_base", "group_base", "computer_base", "bind_dn"):
            value = getattr(self, attr)
            if value:
                check_dn(value, f"{where}: {attr}")
        for attr in ("user_filter", "group_filter", "computer_filter"):
            value = getattr(self, attr)
            if value:
                check_filter(value, f"{where}: {attr}")
        for kind in ("users", "groups", "computers"):
            for key, attribute in self.mapping(kind).items():
                if not _ATTRIBUTE.fullmatch(attribute):
                    raise DirectorySettingsError(f"{where}: {kind[:-1]}_attributes.{key} is not "
                                                 f"an attribute name: {attribute[:40]!r}")
        if not 1 <= self.page_size <= 10000:
            raise DirectorySettingsError(f"{where}: page_size must be 1-10000")
        if not 0 < self.timeout <= 600:
            raise DirectorySettingsError(f"{where}: timeout must be 1-600 seconds")
        if not 1 <= self.max_value_length <= 1_000_000:
            raise DirectorySettingsError(f"{where}: max_value_length must be 1-1000000")
        return self


def check_dn(value: str, where: str) -> str:
    """``value`` if it parses as a DN; DirectorySettingsError otherwise."""
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    if len(value) > MAX_FILTER or "\x00" in value:
        raise DirectorySettingsError(f"{where} is not a DN (too long or contains NUL)")
    try:
        parse_dn(value, escape=False, strip=True)
    except (LDAPInvalidDnError, IndexError, ValueError):
        raise DirectorySettingsError(f"{where} is not a DN: {value[:80]!r}") from None
    return value


def check_filter(value: str, where: str) -> str:
    """``value`` if it is one parenthesised LDAP filter ldap3 can parse; else
    DirectorySettingsError."""
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter

    text = value.strip()
    if len(text) > MAX_FILTER or "\x00" in text or not (text.startswith("(") and text.endswith(")")):
        raise DirectorySettingsError(f"{where} is not an LDAP filter in parentheses: {text[:80]!r}")
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        raise DirectorySettingsError(f"{where}: unbalanced parentheses: {text[:80]!r}")
    try:
        parse_filter(text, None, False, False, None, False)
    except (LDAPException, ValueError, IndexError, TypeError) as exc:
        raise DirectorySettingsError(f"{where} does not parse: {type(exc).__name__}: "
                                     f"{text[:80]!r}") from None
    return text
