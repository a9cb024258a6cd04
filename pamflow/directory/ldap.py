"""Reading a directory: a safe connection (TLS verified unless explicitly opted out) and
paged searches (RFC 2696 simple paged results) that yield raw entries page by page."""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    DirectoryBindRefused,
    DirectorySearchFailed,
    DirectoryUnavailable,
)
from .settings import DirectorySettings

log = logging.getLogger(__name__)

PAGED_RESULTS = "1.2.840.113556.1.4.319"
_INVALID_CREDENTIALS = 49


@dataclass
class Entry:
    """One entry as the directory sent it: its DN and raw attribute values (bytes)."""

    dn: str
    attributes: dict[str, list[bytes]] = field(default_factory=dict)

    def values(self, attribute: str) -> list[bytes]:
        """The raw values of ``attribute`` (``attributes`` is keyed by lowercased name)."""
        return self.attributes.get(attribute.lower()) or []


@dataclass
class SearchStats:
    pages: int = 0
    entries: int = 0


class DirectoryConnection:
    """A bound connection to one directory; use as a context manager."""

    def __init__(self, settings: DirectorySettings, password: str | None) -> None:
        self.settings = settings
        self._password = password
        self._conn: Any = None
        self.stats = SearchStats()

    def __repr__(self) -> str:  # never the password
        return f"DirectoryConnection({self.settings.name}, {self.settings.url})"

    @property
    def _where(self) -> str:
        return f"directory {self.settings.name} ({self.settings.host}:{self.settings.port})"

    def __enter__(self) -> DirectoryConnection:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        from pamflow.targets.ldap import _checked_tls_class

        s = self.settings
        mode = s.tls_mode
        if mode == "none":
            log.warning("%s: tls is none: the bind and every entry travel in cleartext",
                        self._where)
        elif not s.verify_certificate:
            log.warning("%s: verify_certificate is off: the directory's certificate is not "
                        "checked, anyone in the path can read the bind", self._where)
        tls = None
        if mode != "none":
            tls = _checked_tls_class()(
                validate=ssl.CERT_REQUIRED if s.verify_certificate else ssl.CERT_NONE,
                ca_certs_file=s.ca_file or None)
        server = ldap3.Server(s.host, port=s.port, use_ssl=mode == "ldaps", tls=tls,
                              connect_timeout=s.timeout, get_info=ldap3.NONE)
        conn = ldap3.Connection(server, user=s.bind_dn or None, password=self._password,
                                receive_timeout=max(1, math.ceil(s.timeout)),
                                auto_referrals=False, raise_exceptions=False, read_only=True,
                                return_empty_attributes=False,
                                # raw values only: no schema formatting of every value
                                check_names=False)
        try:
            conn.open()
            if mode == "starttls" and not conn.start_tls():
                raise DirectoryUnavailable(f"{self._where}: the directory did not start TLS "
                                           "(StartTLS)")
            if not conn.bind():
                code = conn.result.get("result")
                if code == _INVALID_CREDENTIALS:
                    raise DirectoryBindRefused(f"{self._where}: the directory refused the bind "
                                               f"as {s.bind_dn or 'anonymous'}")
                raise DirectoryBindRefused(f"{self._where}: bind failed: "
                                           f"{conn.result.get('description')} ({code})")
        except (DirectoryUnavailable, DirectoryBindRefused):
            _close(conn)
            raise
        except (LDAPException, OSError) as exc:
            _close(conn)
            raise DirectoryUnavailable(f"{self._where}: {_reason(exc)}") from None
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            _close(self._conn)
            self._conn = None

    def search(self, base: str, search_filter: str, attributes: list[str]) -> Iterator[list[Entry]]:
        """The entries under ``base`` matching ``search_filter``, one list per page.

        Raises DirectorySearchFailed (or DirectoryUnavailable) when the directory answers an
        error or goes away part way: callers write nothing before the last page.
        """
        from ldap3 import SUBTREE
        from ldap3.core.exceptions import LDAPException

        cookie: bytes | None = None
        while True:
            try:
                self._conn.search(base, search_filter, search_scope=SUBTREE,
                                  attributes=attributes or ["1.1"],
                                  paged_size=self.settings.page_size, paged_cookie=cookie)
            except (LDAPException, OSError) as exc:
                raise DirectoryUnavailable(f"{self._where}: search of {base} failed: "
                                           f"{_reason(exc)}") from None
            result = self._conn.result or {}
            code = result.get("result")
            if code not in (0, None):
                raise DirectorySearchFailed(
                    f"{self._where}: search of {base} with {search_filter[:200]} failed: "
                    f"{result.get('description')} ({code}) {str(result.get('message') or '')[:200]}")
            page = [Entry(r["dn"], {k.lower(): v for k, v in (r.get("raw_attributes") or {}).items()})
                    for r in (self._conn.response or []) if r.get("type") == "searchResEntry"]
            self.stats.pages += 1
            self.stats.entries += len(page)
            yield page
            control = (result.get("controls") or {}).get(PAGED_RESULTS) or {}
            cookie = (control.get("value") or {}).get("cookie")
            if not cookie:
                return


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "its TLS certificate is not trusted (set ca_file, or fix the certificate)"
    if "timed out" in text.lower() or isinstance(exc, TimeoutError):
        return "it did not answer in time"
    if "ssl" in text.lower() or isinstance(exc, ssl.SSLError):
        return "no TLS handshake (is it a plain LDAP port? use ldap:// with StartTLS there)"
    if "socket" in text.lower() or isinstance(exc, OSError):
        return f"cannot connect ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text[:200]}"


def _close(conn: Any) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a broken connection: nothing left to do
        log.debug("closing the LDAP connection failed")
