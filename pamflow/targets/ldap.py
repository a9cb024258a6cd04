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

The account's DN comes from, in order: the username itself when it is a DN; the
``user_dn_template``; for AD without a template, the username as given (AD binds with
``user@domain`` or ``DOMAIN\\user``; ``domain`` setting prefixes ``DOMAIN\\``) for verify and
self-service, and a search for admin changes; otherwise a subtree search of
``search_base`` with ``search_filter`` (as the admin, or anonymously without one).

Endpoint.settings keys (all optional unless said):

``directory``        ``openldap`` (default) or ``ad``.
``port``             overrides Endpoint.port; default Endpoint.port, else 389 / 636 (an
                     LDAPS device given the plain default 389 uses 636).
``use_ssl``          LDAPS (TLS from the first byte).
``start_tls``        StartTLS on the plain port before binding.
``tls_validate``     ``required`` (default) or ``none``: whether the server certificate must
                     be valid for the host.
``ca_certs_file``    a CA bundle (PEM) trusted for the server certificate.
``user_dn_template`` e.g. ``uid={username},ou=people,dc=example,dc=org`` (the username is
                     DN-escaped).
``search_base``      where to search accounts (required when no template and not a DN).
``search_filter``    default ``(uid={username})`` (openldap) or
                     ``(sAMAccountName={username})`` (ad); the username is filter-escaped.
``domain``           AD NetBIOS domain used to bind as ``DOMAIN\\user`` when no DN is known.

The admin's username should be its DN (or, for AD, ``user@domain`` / ``DOMAIN\\user``); a
bare name goes through ``user_dn_template`` like any account.

Timeouts: ``timeout`` bounds the TCP connect and every response. Socket errors raise
``Unreachable``; errors name the device, account and step, never a secret.
"""

from __future__ import annotations

import logging
import math
import ssl

from pamflow.targets.base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    ChangeResult,
    Endpoint,
    Login,
    TargetError,
    Unreachable,
)

log = logging.getLogger(__name__)

# LDAP result codes (RFC 4511)
_SUCCESS = 0
_INVALID_CREDENTIALS = 49
_NO_SUCH_OBJECT = 32


class _NoSuchAccount(ChangeRefused):
    """The account search found no entry."""


class UntrustedCertificate(Unreachable):
    """The directory's TLS certificate failed validation: retrying will not help."""

    retryable = False


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


def _looks_like_dn(name: str) -> bool:
    return "=" in name and not name.startswith("(")


class LDAPTarget:
    """Accounts of an LDAP directory (OpenLDAP and compatible, or Active Directory)."""

    protocol = "ldap"

    # -- connection ----------------------------------------------------------------------
    @staticmethod
    def _settings(endpoint: Endpoint) -> dict:
        return dict(endpoint.settings or {})

    def _is_ad(self, endpoint: Endpoint) -> bool:
        return str(self._settings(endpoint).get("directory") or "openldap").lower() in (
            "ad", "activedirectory", "active_directory")

    def _server(self, endpoint: Endpoint, timeout: float):
        import ldap3

        s = self._settings(endpoint)
        use_ssl = bool(s.get("use_ssl"))
        port = int(s.get("port") or endpoint.port or (636 if use_ssl else 389))
        if use_ssl and port == 389 and not s.get("port"):
            port = 636  # the protocol's default plain port came with an LDAPS device
        tls = None
        if use_ssl or s.get("start_tls"):
            validate = str(s.get("tls_validate") or "required").lower()
            tls = ldap3.Tls(validate=ssl.CERT_NONE if validate == "none" else ssl.CERT_REQUIRED,
                            ca_certs_file=s.get("ca_certs_file") or None)
        return ldap3.Server(endpoint.address, port=port, use_ssl=use_ssl, tls=tls,
                            connect_timeout=timeout, get_info=ldap3.NONE)

    def _connect(self, endpoint: Endpoint, bind_name: str | None, secret: str | None,
                 timeout: float, account: str, step: str):
        """An open (TLS if asked) connection, bound as ``bind_name`` (anonymous if None).

        Raises AuthenticationFailed on invalidCredentials, Unreachable on socket errors.
        """
        import ldap3
        from ldap3.core.exceptions import LDAPException

        where = {"device": endpoint.name, "account": account, "step": step}
        conn = ldap3.Connection(self._server(endpoint, timeout), user=bind_name,
                                password=secret,
                                # ldap3 packs it into SO_RCVTIMEO: whole seconds only
                                receive_timeout=max(1, math.ceil(timeout)),
                                auto_referrals=False, raise_exceptions=False,
                                read_only=False)
        try:
            conn.open()
            if self._settings(endpoint).get("start_tls") and not conn.start_tls():
                raise Unreachable("StartTLS failed", **where)
            if bind_name is not None and not conn.bind():
                code = conn.result.get("result")
                desc = conn.result.get("description", "")
                conn.unbind()
                if code == _INVALID_CREDENTIALS:
                    raise AuthenticationFailed("the directory refused the credentials", **where)
                raise ChangeRefused(f"bind failed: {desc} ({code})", **where)
        except TargetError:
            raise
        except LDAPException as exc:
            raise self._translate(exc, where) from None
        except OSError as exc:
            raise self._translate(exc, where) from None
        return conn

    @staticmethod
    def _translate(exc: BaseException, where: dict) -> TargetError:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return UntrustedCertificate("the directory's TLS certificate is not trusted",
                                        **where)
        return Unreachable(f"cannot reach the directory: {type(exc).__name__}", **where)

    # -- locating accounts ---------------------------------------------------------------
    def _template_dn(self, endpoint: Endpoint, username: str) -> str | None:
        from ldap3.utils.dn import escape_rdn

        if _looks_like_dn(username):
            return username
        template = self._settings(endpoint).get("user_dn_template")
        if template:
            return str(template).format(username=escape_rdn(username))
        return None

    def _bind_name(self, endpoint: Endpoint, username: str) -> str | None:
        """What to bind as for ``username`` without searching (None: search needed)."""
        dn = self._template_dn(endpoint, username)
        if dn is not None:
            return dn
        if self._is_ad(endpoint):
            domain = self._settings(endpoint).get("domain")
            if domain and "\\" not in username and "@" not in username:
                return f"{domain}\\{username}"
            return username
        return None

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
        dn = self._template_dn(endpoint, username)
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
        s = self._settings(endpoint)
        if self._is_ad(endpoint) and not (s.get("use_ssl") or s.get("start_tls")):
            raise ChangeRefused("Active Directory accepts unicodePwd only over LDAPS or "
                                "StartTLS: set use_ssl or start_tls", **where)

    def apply(self, endpoint: Endpoint, changes: list[Change], admin: Login | None,
              timeout: float) -> list[ChangeResult]:
        """Set each account's password (admin reset, or self change); see the module doc."""
        if not changes:
            return []
        if admin is not None:
            return self._apply_admin(endpoint, changes, admin, timeout)
        results = [self._apply_self(endpoint, change, timeout) for change in changes]
        if all(isinstance(r.error, Unreachable) for r in results):
            raise results[0].error
        return results

    def _apply_admin(self, endpoint: Endpoint, changes: list[Change], admin: Login,
                     timeout: float) -> list[ChangeResult]:
        step = "apply as admin"
        try:
            self._require_tls_for_ad(endpoint, {"device": endpoint.name,
                                                "account": admin.username, "step": step})
        except ChangeRefused as exc:
            return [ChangeResult(change.username, exc) for change in changes]
        admin_name = self._bind_name(endpoint, admin.username) or admin.username
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
                if isinstance(error, Unreachable) and not isinstance(error, UntrustedCertificate):
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
            dn = self._locate_for_bind(endpoint, change.username, timeout, where)
            conn = self._connect(endpoint, dn, change.current_secret, timeout,
                                 change.username, step)
            try:
                if self._is_ad(endpoint) and not _looks_like_dn(dn):
                    # bound as user@domain / DOMAIN\user: modify needs the entry's DN
                    dn = self._search_dn(conn, endpoint, change.username, where)
                error = self._change(conn, endpoint, dn, change, change.current_secret, where)
            finally:
                conn.unbind()
        except TargetError as exc:
            error = exc
        return ChangeResult(change.username, error)

    def _locate_for_bind(self, endpoint: Endpoint, username: str, timeout: float,
                         where: dict) -> str:
        """The name to bind as: template/DN/AD name, else an anonymous search."""
        name = self._bind_name(endpoint, username)
        if name is not None:
            return name
        conn = self._connect(endpoint, None, None, timeout, username, where["step"])
        try:
            return self._search_dn(conn, endpoint, username, where)
        finally:
            conn.unbind()

    # -- verifying -------------------------------------------------------------------------
    def verify(self, endpoint: Endpoint, login: Login, timeout: float) -> bool:
        """A simple bind as the account: False on invalidCredentials."""
        where = {"device": endpoint.name, "account": login.username, "step": "verify"}
        if not login.secret:
            return False  # an empty password would be an unauthenticated bind (RFC 4513)
        try:
            name = self._locate_for_bind(endpoint, login.username, timeout, where)
        except _NoSuchAccount:
            return False  # no such account: nothing can log in as it
        try:
            conn = self._connect(endpoint, name, login.secret, timeout, login.username, "verify")
        except AuthenticationFailed:
            return False
        conn.unbind()
        return True
