"""Directory account passwords over LDAP (ldap3): OpenLDAP-style and Active Directory.

*apply* binds once per device — as the admin when there is one, otherwise as each account
with its current password — and for every change:

- ``directory: openldap`` (default): the RFC 3062 Password Modify extended operation
  (``modify_password``), without the old password as admin, with it as the account; the
  server hashes the new secret by its own policy (``password-hash``).
- ``directory: ad``: Active Directory's ``unicodePwd`` — a *replace* as admin (a reset),
  *delete old value + add new value* as the account (a change, which AD checks against the
  old password and the password policy). The value is the password in double quotes,
  UTF-16-LE encoded; AD only accepts it over LDAPS or StartTLS, so this target refuses to
  send it otherwise.

*verify* is a simple bind as the account's DN: ``invalidCredentials`` means False.

Transport security. By default the target speaks LDAPS (TLS from the first byte, port 636)
and checks the server certificate: it must chain to a trusted CA (``ca_certs_file``, else
the system's CA store) and name the host the device is reached at. StartTLS on the plain
port is the other secure mode. Plain LDAP — the bind and every new password in cleartext —
happens only when the device says ``tls: none``, and each such connection logs a WARNING
naming the device; so does each connection made with ``tls_validate: none``. A certificate
that fails validation, or a port that does not speak TLS, raises ``TLSFailed``
(``UntrustedCertificate`` for the former) before any credential is sent; retrying does
not help.

Account names. A username is a *name*: it goes DN-escaped into ``user_dn_template`` or
filter-escaped into ``search_filter``, even when it contains ``=``, so an account called
``cn=admin,dc=example,dc=org`` means an entry of that name, never the admin entry. Only a
device with ``usernames_are_dns: true`` uses a username containing ``=`` as the account's
DN; it must then parse as a DN and lie under ``search_base`` (or, without one, under the
parent of ``user_dn_template``), else the change is refused.

The account's DN comes from, in order: the username itself when DNs are allowed and it is
one; the ``user_dn_template``; for AD without a template, the username as given (AD binds
with ``user@domain`` or ``DOMAIN\\user``; ``domain`` setting prefixes ``DOMAIN\\``) for verify
and self-service, and a search for admin changes; otherwise a subtree search of
``search_base`` with ``search_filter`` (as the admin, or anonymously without one).

Endpoint.settings keys (all optional unless said):

``directory``         ``openldap`` (default) or ``ad``.
``tls``               ``ldaps`` (default), ``starttls`` or ``none`` (cleartext: an explicit
                      opt-in, warned on every connection). Older spellings ``use_ssl: true``
                      (= ldaps) and ``start_tls: true`` (= starttls) are understood.
``port``              overrides Endpoint.port; default Endpoint.port, else 636 (ldaps) or 389.
                      Without this setting, a device port that is the other mode's default
                      follows the mode: 389 with ldaps uses 636, 636 with starttls/none 389.
``tls_validate``      ``required`` (default) or ``none`` (no certificate check: warned on
                      every connection).
``ca_certs_file``     a CA bundle (PEM) trusted for the server certificate.
``user_dn_template``  e.g. ``uid={username},ou=people,dc=example,dc=org`` (the username is
                      DN-escaped).
``search_base``       where to search accounts (required when no template).
``search_filter``     default ``(uid={username})`` (openldap) or
                      ``(sAMAccountName={username})`` (ad); the username is filter-escaped.
``usernames_are_dns`` ``true``: a username containing ``=`` is the account's DN (see above).
``domain``            AD NetBIOS domain used to bind as ``DOMAIN\\user`` when no DN is known.

The admin's username is what the target binds as: its DN (used as given when it parses as
one — binding changes nothing), or for AD ``user@domain`` / ``DOMAIN\\user``; a bare name
goes through ``user_dn_template`` like any account. When the admin's own password is
rotated it is an account like any other: a DN username then needs ``usernames_are_dns``.

Timeouts: ``timeout`` bounds the TCP connect and every response. Socket errors raise
``Unreachable`` at step ``connect``; errors name the device, account and step, never a
secret.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import ssl
from typing import Any

from pamflow.targets.base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    ChangeResult,
    Endpoint,
    InvalidSetting,
    Login,
    TargetError,
    TLSFailed,
    Unreachable,
)

log = logging.getLogger(__name__)

# LDAP result codes (RFC 4511)
_SUCCESS = 0
_INVALID_CREDENTIALS = 49
_NO_SUCH_OBJECT = 32

TLS_MODES = ("ldaps", "starttls", "none")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


class _NoSuchAccount(ChangeRefused):
    """The account search found no entry."""


class UntrustedCertificate(TLSFailed):
    """The directory's TLS certificate failed validation: nothing was sent."""


def ad_password_value(password: str) -> bytes:
    """The ``unicodePwd`` value AD expects: the password in double quotes, UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


def ad_password_changes(new_password: str, old_password: str | None = None) -> dict:
    """The ldap3 modification for AD: replace (reset) or delete old + add new (change)."""
    from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE

    if old_password is None:
        return {"unicodePwd": [(MODIFY_REPLACE, [ad_password_value(new_password)])]}
    return {"unicodePwd": [(MODIFY_DELETE, [ad_password_value(old_password)]),
                           (MODIFY_ADD, [ad_password_value(new_password)])]}


def _rdns(dn: str) -> list[frozenset[tuple[str, str]]]:
    """A DN as its RDNs (each a set of (attribute, value), compared case-insensitively).

    Raises ``ValueError`` when ``dn`` is not a DN.
    """
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        avas = parse_dn(dn, escape=False, strip=True)
    except (LDAPInvalidDnError, IndexError) as exc:
        raise ValueError(str(exc) or "not a DN") from None
    rdns: list[frozenset[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for attribute, value, separator in avas:
        current.append((attribute.strip().lower(), value.strip().lower()))
        if separator != "+":
            rdns.append(frozenset(current))
            current = []
    if current or not rdns:
        raise ValueError("incomplete DN")
    return rdns


def dn_is_below(dn: str, base: str) -> bool:
    """True when ``dn`` is an entry below ``base`` (not ``base`` itself); both must be DNs."""
    return _below(_rdns(dn), _rdns(base))


def _below(entry: list, parent: list) -> bool:
    return len(entry) > len(parent) and entry[len(entry) - len(parent):] == parent


@functools.cache
def _checked_tls_class() -> type:
    """``ldap3.Tls`` whose handshake verifies the certificate and host name in OpenSSL.

    ldap3 turns the context's host name check off and checks afterwards itself; this does
    it during the handshake with the standard library's rules (DNS names and IP addresses)
    and sends SNI.
    """
    import ldap3

    class CheckedTls(ldap3.Tls):
        def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                                 cafile=self.ca_certs_file)
            if self.validate == ssl.CERT_NONE:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            connection.socket = context.wrap_socket(
                connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
                server_hostname=connection.server.host)

    return CheckedTls


def _close(conn: Any) -> None:
    """Unbind, ignoring a connection that is already broken."""
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a broken connection: nothing left to do
        log.debug("closing the LDAP connection failed", exc_info=False)


class LDAPTarget:
    """Accounts of an LDAP directory (OpenLDAP and compatible, or Active Directory)."""

    protocol = "ldap"

    # -- settings --------------------------------------------------------------------------
    @staticmethod
    def _settings(endpoint: Endpoint) -> dict:
        return dict(endpoint.settings or {})

    def _is_ad(self, endpoint: Endpoint) -> bool:
        return str(self._settings(endpoint).get("directory") or "openldap").lower() in (
            "ad", "activedirectory", "active_directory")

    @staticmethod
    def _flag(s: dict, name: str, where: dict) -> bool:
        value = s.get(name)
        if value is None or isinstance(value, bool):
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise InvalidSetting(f"setting {name} must be true or false, not {value!r}",
                             **{**where, "step": "validate"})

    def _tls_mode(self, endpoint: Endpoint, where: dict) -> str:
        """``ldaps`` | ``starttls`` | ``none`` from the device's settings."""
        s = self._settings(endpoint)
        mode = s.get("tls")
        if mode is None or mode == "":
            if self._flag(s, "start_tls", where):
                return "starttls"
            return "ldaps"  # use_ssl: true says the same; use_ssl: false alone is no opt-in
        mode = str(mode).strip().lower()
        if mode not in TLS_MODES:
            raise InvalidSetting(f"setting tls must be one of {', '.join(TLS_MODES)}, not "
                                 f"{s.get('tls')!r}", **{**where, "step": "validate"})
        return mode

    def _verifies_certificate(self, endpoint: Endpoint, where: dict) -> bool:
        value = str(self._settings(endpoint).get("tls_validate") or "required").strip().lower()
        if value not in ("required", "none"):
            raise InvalidSetting("setting tls_validate must be required or none, not "
                                 f"{value!r}", **{**where, "step": "validate"})
        return value == "required"

    def _check_settings(self, endpoint: Endpoint, where: dict) -> None:
        """Refuse unusable settings before anything is sent."""
        self._tls_mode(endpoint, where)
        self._verifies_certificate(endpoint, where)
        self._flag(self._settings(endpoint), "usernames_are_dns", where)

    # -- connection ----------------------------------------------------------------------
    def _port(self, endpoint: Endpoint, mode: str) -> int:
        s = self._settings(endpoint)
        default = 636 if mode == "ldaps" else 389
        port = int(s.get("port") or endpoint.port or default)
        if not s.get("port"):
            # the device's port was the other mode's default (a platform default): follow the mode
            if mode == "ldaps" and port == 389:
                port = 636
            elif mode != "ldaps" and port == 636:
                port = 389
        return port

    def _server(self, endpoint: Endpoint, timeout: float, where: dict):
        import ldap3

        mode = self._tls_mode(endpoint, where)
        verify = self._verifies_certificate(endpoint, where)
        port = self._port(endpoint, mode)
        if mode == "none":
            log.warning("ldap: device %s (%s:%s): tls is none: the bind and any new password "
                        "travel in cleartext", endpoint.name, endpoint.address, port)
        elif not verify:
            log.warning("ldap: device %s (%s:%s): tls_validate is none: the directory's "
                        "certificate is not checked, anyone in the path can read the bind and "
                        "passwords", endpoint.name, endpoint.address, port)
        tls = None
        if mode != "none":
            tls = _checked_tls_class()(
                validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
                ca_certs_file=self._settings(endpoint).get("ca_certs_file") or None)
        return ldap3.Server(endpoint.address, port=port, use_ssl=mode == "ldaps", tls=tls,
                            connect_timeout=timeout, get_info=ldap3.NONE), mode

    def _connect(self, endpoint: Endpoint, bind_name: str | None, secret: str | None,
                 timeout: float, account: str, step: str):
        """An open connection (TLS unless ``tls: none``), bound as ``bind_name`` (anonymous
        if None). Nothing is sent before TLS is up and the certificate checked.

        Raises AuthenticationFailed on invalidCredentials, Unreachable/TLSFailed (step
        ``connect``) when the directory cannot be reached safely.
        """
        import ldap3
        from ldap3.core.exceptions import LDAPException

        where = {"device": endpoint.name, "account": account, "step": step}
        connecting = {**where, "step": "connect"}
        server, mode = self._server(endpoint, timeout, where)
        conn = ldap3.Connection(server, user=bind_name, password=secret,
                                # ldap3 packs it into SO_RCVTIMEO: whole seconds only
                                receive_timeout=max(1, math.ceil(timeout)),
                                auto_referrals=False, raise_exceptions=False,
                                read_only=False)
        try:
            try:
                conn.open()
                if mode == "starttls" and not conn.start_tls():
                    raise TLSFailed("the directory did not start TLS (StartTLS)", **connecting)
            except TargetError:
                raise
            except (LDAPException, OSError) as exc:
                raise self._translate(exc, connecting, server.port, mode) from None
            if bind_name is not None and not conn.bind():
                code = conn.result.get("result")
                desc = conn.result.get("description", "")
                if code == _INVALID_CREDENTIALS:
                    raise AuthenticationFailed("the directory refused the credentials", **where)
                raise ChangeRefused(f"bind failed: {desc} ({code})", **where)
        except TargetError:
            _close(conn)
            raise
        except (LDAPException, OSError) as exc:
            _close(conn)
            raise self._translate(exc, {**where, "step": "bind"}) from None
        return conn

    @staticmethod
    def _translate(exc: BaseException, where: dict, port: int | None = None,
                   mode: str = "") -> TargetError:
        from ldap3.core.exceptions import LDAPStartTLSError

        text = str(exc)
        if "timed out" in text.lower() or isinstance(exc, TimeoutError):
            return Unreachable("the directory did not answer in time", **where)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            found = re.search(r"certificate verify failed: ([^(\]]+)", text)
            reason = f" ({found.group(1).strip()})" if found else ""
            return UntrustedCertificate(f"the directory's TLS certificate is not trusted{reason}",
                                        **where)
        if isinstance(exc, LDAPStartTLSError):
            return TLSFailed("the directory refused StartTLS or its TLS handshake failed",
                             **where)
        if "ssl" in text.lower() or isinstance(exc, ssl.SSLError):
            hint = (": is it a plain LDAP port? (tls: starttls uses StartTLS there)"
                    if mode == "ldaps" else "")
            return TLSFailed(f"no TLS handshake with the directory on port {port}{hint}", **where)
        return Unreachable(f"cannot reach the directory: {type(exc).__name__}", **where)

    # -- locating accounts ---------------------------------------------------------------
    def _dns_allowed(self, endpoint: Endpoint) -> bool:
        return self._flag(self._settings(endpoint), "usernames_are_dns", {})

    def _allowed_dn(self, endpoint: Endpoint, username: str, where: dict) -> str:
        """``username`` as a DN on a device that allows DNs: it must parse and lie below the
        device's base (``search_base``, else the parent of ``user_dn_template``)."""
        s = self._settings(endpoint)
        refused = {**where, "step": "validate"}
        try:
            entry = _rdns(username)
        except ValueError as exc:
            raise ChangeRefused(f"the account name is not a valid DN: {exc}", **refused) from None
        base, parent = s.get("search_base"), None
        if base:
            try:
                parent = _rdns(str(base))
            except ValueError:
                raise InvalidSetting(f"setting search_base is not a valid DN: {base!r}",
                                     **refused) from None
        elif s.get("user_dn_template"):
            try:
                parent = _rdns(str(s["user_dn_template"]).format(username="x"))[1:]
                base = "the parent of user_dn_template"
            except (ValueError, KeyError, IndexError):
                parent = None
        if parent and not _below(entry, parent):
            raise ChangeRefused(f"the account's DN is not below the device's base ({base})",
                                **refused)
        return username

    def _account_dn(self, endpoint: Endpoint, username: str, where: dict) -> str | None:
        """The DN of an account without searching (None: a search is needed)."""
        from ldap3.utils.dn import escape_rdn

        if not username:
            raise ChangeRefused("the account name is empty", **{**where, "step": "validate"})
        if "=" in username and self._dns_allowed(endpoint):
            return self._allowed_dn(endpoint, username, where)
        template = self._settings(endpoint).get("user_dn_template")
        if template:
            return str(template).format(username=escape_rdn(username))
        return None

    def _bind_name(self, endpoint: Endpoint, username: str, where: dict
                   ) -> tuple[str | None, bool]:
        """What to bind as for an account without searching, and whether it is a DN
        ((None, False): a search is needed)."""
        dn = self._account_dn(endpoint, username, where)
        if dn is not None:
            return dn, True
        if self._is_ad(endpoint) and "=" not in username:
            domain = self._settings(endpoint).get("domain")
            if domain and "\\" not in username and "@" not in username:
                return f"{domain}\\{username}", False
            return username, False
        return None, False

    def _admin_bind_name(self, endpoint: Endpoint, username: str, where: dict) -> str:
        """The admin binds as its DN when its username is one; binding changes nothing."""
        if "=" in username:
            try:
                _rdns(username)
                return username
            except ValueError:
                pass
        name, _is_dn = self._bind_name(endpoint, username, where)
        return name or username

    def _search_dn(self, conn, endpoint: Endpoint, username: str, where: dict) -> str:
        from ldap3 import SUBTREE
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars

        s = self._settings(endpoint)
        base = s.get("search_base")
        if not base:
            raise ChangeRefused("no user_dn_template or search_base to find the account",
                                **where)
        default = "(sAMAccountName={username})" if self._is_ad(endpoint) else "(uid={username})"
        flt = str(s.get("search_filter") or default).format(
            username=escape_filter_chars(username))
        try:
            ok = conn.search(base, flt, search_scope=SUBTREE, attributes=[], size_limit=2)
        except LDAPException as exc:
            raise self._translate(exc, where) from None
        if not ok and conn.result.get("result") not in (_SUCCESS, _NO_SUCH_OBJECT):
            raise ChangeRefused(f"account search failed: {conn.result.get('description')}",
                                **where)
        entries = [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]
        if not entries:
            raise _NoSuchAccount("no such account in the directory", **where)
        if len(entries) > 1:
            raise ChangeRefused("the account search matched more than one entry", **where)
        return entries[0]["dn"]

    def _resolve(self, conn, endpoint: Endpoint, username: str, where: dict) -> str:
        dn = self._account_dn(endpoint, username, where)
        return dn if dn is not None else self._search_dn(conn, endpoint, username, where)

    # -- changing --------------------------------------------------------------------------
    def _change(self, conn, endpoint: Endpoint, dn: str, change: Change, old: str | None,
                where: dict) -> TargetError | None:
        """Apply one change on a bound connection; None on success."""
        from ldap3.core.exceptions import LDAPException

        try:
            if self._is_ad(endpoint):
                ok = conn.modify(dn, ad_password_changes(change.new_secret, old))
            else:
                ok = conn.extend.standard.modify_password(dn, old, change.new_secret)
        except LDAPException as exc:
            return self._translate(exc, where)
        if ok:
            return None
        code, desc = conn.result.get("result"), conn.result.get("description", "")
        if code == _NO_SUCH_OBJECT:
            return ChangeRefused("no such account in the directory", **where)
        if code == _INVALID_CREDENTIALS:
            return AuthenticationFailed("the directory refused the current password", **where)
        message = conn.result.get("message") or ""
        return ChangeRefused(f"the directory refused the change: {desc} ({code})"
                             + (f": {message}" if message and change.new_secret not in message
                                and (not old or old not in message) else ""), **where)

    def _require_tls_for_ad(self, endpoint: Endpoint, where: dict) -> None:
        if self._is_ad(endpoint) and self._tls_mode(endpoint, where) == "none":
            raise ChangeRefused("Active Directory accepts unicodePwd only over LDAPS or "
                                "StartTLS: the device has tls: none", **where)

    def apply(self, endpoint: Endpoint, changes: list[Change], admin: Login | None,
              timeout: float) -> list[ChangeResult]:
        """Set each account's password (admin reset, or self change); see the module doc."""
        if not changes:
            return []
        try:
            self._check_settings(endpoint, {"device": endpoint.name, "step": "validate"})
        except InvalidSetting as exc:
            return [ChangeResult(change.username, exc) for change in changes]
        if admin is not None:
            return self._apply_admin(endpoint, changes, admin, timeout)
        results = [self._apply_self(endpoint, change, timeout) for change in changes]
        down = [r.error for r in results if isinstance(r.error, Unreachable)]
        if len(down) == len(results):
            raise down[0]
        return results

    def _apply_admin(self, endpoint: Endpoint, changes: list[Change], admin: Login,
                     timeout: float) -> list[ChangeResult]:
        step = "apply as admin"
        admin_where = {"device": endpoint.name, "account": admin.username, "step": step}
        try:
            self._require_tls_for_ad(endpoint, admin_where)
        except ChangeRefused as exc:
            return [ChangeResult(change.username, exc) for change in changes]
        admin_name = self._admin_bind_name(endpoint, admin.username, admin_where)
        try:
            conn = self._connect(endpoint, admin_name, admin.secret, timeout, admin.username,
                                 step)
        except ChangeRefused as exc:  # the bind failed for another reason than the password
            return [ChangeResult(change.username, exc) for change in changes]
        results = []
        try:
            for change in changes:
                where = {"device": endpoint.name, "account": change.username, "step": "apply"}
                try:
                    dn = self._resolve(conn, endpoint, change.username, where)
                    error = self._change(conn, endpoint, dn, change, None, where)
                except TargetError as exc:
                    error = exc
                if isinstance(error, Unreachable) and not isinstance(error, TLSFailed):
                    # the connection broke: this change's outcome and the rest are unknown
                    results.append(ChangeResult(change.username, error))
                    for rest in changes[len(results):]:
                        results.append(ChangeResult(rest.username, Unreachable(
                            "the directory connection was lost", device=endpoint.name,
                            account=rest.username, step="apply")))
                    break
                results.append(ChangeResult(change.username, error))
        finally:
            conn.unbind()
        return results

    def _apply_self(self, endpoint: Endpoint, change: Change, timeout: float) -> ChangeResult:
        step = "apply as the account"
        where = {"device": endpoint.name, "account": change.username, "step": step}
        try:
            if not change.current_secret:
                raise ChangeRefused("no current password for a self-service change", **where)
            self._require_tls_for_ad(endpoint, where)
            name, is_dn = self._locate_for_bind(endpoint, change.username, timeout, where)
            conn = self._connect(endpoint, name, change.current_secret, timeout,
                                 change.username, step)
            try:
                dn = name
                if not is_dn:  # bound as user@domain / DOMAIN\user: modify needs the DN
                    dn = self._search_dn(conn, endpoint, change.username, where)
                error = self._change(conn, endpoint, dn, change, change.current_secret, where)
            finally:
                conn.unbind()
        except TargetError as exc:
            error = exc
        return ChangeResult(change.username, error)

    def _locate_for_bind(self, endpoint: Endpoint, username: str, timeout: float,
                         where: dict) -> tuple[str, bool]:
        """The name to bind as (template/DN/AD name, else an anonymous search) and whether
        it is a DN."""
        name, is_dn = self._bind_name(endpoint, username, where)
        if name is not None:
            return name, is_dn
        conn = self._connect(endpoint, None, None, timeout, username, where["step"])
        try:
            return self._search_dn(conn, endpoint, username, where), True
        finally:
            conn.unbind()

    # -- verifying -------------------------------------------------------------------------
    def verify(self, endpoint: Endpoint, login: Login, timeout: float) -> bool:
        """A simple bind as the account: False on invalidCredentials."""
        where = {"device": endpoint.name, "account": login.username, "step": "verify"}
        self._check_settings(endpoint, where)
        if not login.secret:
            return False  # an empty password would be an unauthenticated bind (RFC 4513)
        try:
            name, _is_dn = self._locate_for_bind(endpoint, login.username, timeout, where)
        except _NoSuchAccount:
            return False  # no such account: nothing can log in as it
        try:
            conn = self._connect(endpoint, name, login.secret, timeout, login.username, "verify")
        except AuthenticationFailed:
            return False
        conn.unbind()
        return True
