"""Windows local-account passwords over WinRM (pywinrm).

*apply* runs one PowerShell process per device through the admin account (or, without an
admin, one per account as the account itself) that resets each password with
``[ADSI]"WinNT://$env:COMPUTERNAME/<name>,user"`` — ``SetPassword`` as admin, ``ChangePassword``
with the current password otherwise; the Windows equivalent of ``net user NAME *`` that
needs neither a console nor the secret on a command line. The script travels base64 in
``-EncodedCommand`` and holds no secret; account names and passwords go on the command's
stdin stream (WS-Management ``Send``), base64-encoded one per line, so quotes, ``$``,
backticks, ``%`` or any Unicode reach Windows unchanged whatever the console code page.
The script answers ``PAMFLOW-OK <i>`` or ``PAMFLOW-ERR <i> <reason>`` for each account.

*verify* authenticates as the account and runs ``whoami``: HTTP 401 means the password is
wrong (False); a WS-Management "access denied" after authentication means the password is
right but the account may not open a remote shell (True).

Transport security. By default the target speaks HTTPS (port 5986) and validates the
listener's certificate — chain and host name — against ``ca_certs_file`` (or the system's
CA store); nothing is sent before the TLS handshake succeeded. Plain HTTP, where NTLM does
not authenticate the server and Basic sends the password in cleartext, happens only when
the device says ``scheme: http``; every such connection, and every one made with
``server_cert_validation: ignore``, logs a WARNING naming the device. A certificate that
fails validation, or a listener that does not speak TLS, raises ``TLSFailed``
(``UntrustedCertificate`` for the former) at step ``connect``; retrying does not help.

Account names never enter a script or a command line: the scripts are constant, and a name
travels base64-encoded on stdin like the passwords. Names holding a character Windows
forbids in account names (``"/\\[]:;|=,+*?<>@``, line breaks) are refused before
anything is sent, so none can re-address the ``WinNT://`` path either; so are names with a
domain prefix other than ``.`` or the device's own name (``CORP\\Administrator`` is a
domain account, not the local ``Administrator``).

Endpoint.settings keys (all optional):

``scheme``                 ``https`` (default) or ``http`` (cleartext transport: an explicit
                           opt-in, warned on every use).
``port``                   overrides Endpoint.port; default Endpoint.port, else 5986 / 5985.
                           Without this setting, a device port that is the other scheme's
                           default follows the scheme: 5985 with https uses 5986, 5986 with
                           http 5985.
``path``                   the WS-Management path, default ``/wsman``.
``transport``              ``ntlm`` (default) or ``basic`` (or another pywinrm transport:
                           ``kerberos``, ``credssp``, ``certificate``, ``plaintext``,
                           ``ssl``). Basic sends the credentials UTF-8 encoded.
``server_cert_validation`` ``validate`` (default) or ``ignore`` (no certificate check: warned
                           on every use).
``ca_certs_file``          a CA bundle (PEM file) trusted for the HTTPS certificate (also
                           spelled ``ca_trust_path``); default ``REQUESTS_CA_BUNDLE`` /
                           ``CURL_CA_BUNDLE``, else certifi's bundle.
``message_encryption``     ``auto`` (default: NTLM encrypts over HTTP), ``always``, ``never``.
``proxy``                  a proxy URL; default none (environment proxies are ignored).

Timeouts: ``timeout`` bounds every HTTP call (connect and read); a whole device's change
gets ``timeout`` plus a tenth of it per 10 accounts. Errors name the device, account and
step, never a secret: remote messages are scrubbed of the secrets they might echo.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Literal, TypeVar

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

_FORBIDDEN_NAME_CHARS = set('"/\\[]:;|=,+*?<>@\r\n\0')
SCHEMES = ("https", "http")
Transport = Literal["ntlm", "basic", "kerberos", "credssp", "certificate", "plaintext", "ssl"]
Validation = Literal["validate", "ignore"]
Encryption = Literal["auto", "always", "never"]
TRANSPORTS: tuple[Transport, ...] = ("ntlm", "basic", "kerberos", "credssp", "certificate", "plaintext",
                                     "ssl")
VALIDATIONS: tuple[Validation, ...] = ("validate", "ignore")
ENCRYPTIONS: tuple[Encryption, ...] = ("auto", "always", "never")
_Choice = TypeVar("_Choice", bound=str)
_STDIN_CHUNK = 48 * 1024  # bytes per WS-Management Send (envelope max is 150 KiB)
_ACCESS_DENIED = 5

_READER = r"""
$ErrorActionPreference = 'Stop'
$utf8 = New-Object System.Text.UTF8Encoding $false
function Read-Field {
    $line = [Console]::In.ReadLine()
    if ($null -eq $line) { return $null }
    return $utf8.GetString([Convert]::FromBase64String($line))
}
function Write-Outcome($index, $err) {
    if ($null -eq $err) { [Console]::Out.WriteLine("PAMFLOW-OK $index"); return }
    $e = $err.Exception
    while ($null -ne $e.InnerException) { $e = $e.InnerException }
    [Console]::Out.WriteLine("PAMFLOW-ERR $index " + ($e.Message -replace '\s+', ' '))
}
$index = 0
"""

# Admin reset: stdin holds (name, new password) pairs.
RESET_SCRIPT = _READER + r"""
while ($true) {
    $name = Read-Field
    if ($null -eq $name) { break }
    $new = Read-Field
    try {
        $account = [ADSI]("WinNT://$env:COMPUTERNAME/" + $name + ",user")
        $account.SetPassword($new)
        $account.SetInfo()
        Write-Outcome $index $null
    } catch { Write-Outcome $index $_ }
    $new = $null
    $index++
}
exit 0
"""

# Self-service change: stdin holds (name, current password, new password).
CHANGE_SCRIPT = _READER + r"""
while ($true) {
    $name = Read-Field
    if ($null -eq $name) { break }
    $old = Read-Field
    $new = Read-Field
    try {
        $account = [ADSI]("WinNT://$env:COMPUTERNAME/" + $name + ",user")
        $account.ChangePassword($old, $new)
        Write-Outcome $index $null
    } catch { Write-Outcome $index $_ }
    $old = $null
    $new = $null
    $index++
}
exit 0
"""


class _BadSetting(ValueError):
    """A WinRM setting of the device is not usable."""


class _NotConnected(Exception):
    """Opening the remote shell failed: nothing ran on the host (``cause`` says why)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Deadline(Exception):
    """The command outlived the device's deadline (its outcome is unknown)."""


class UntrustedCertificate(TLSFailed):
    """The HTTPS certificate failed validation: nothing was sent; retrying will not help."""


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


def _encoded(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            text = text.replace(_b64(secret).decode(), "***")
    return " ".join(text.split())[:300]


def _one_of(value: str, choices: tuple[_Choice, ...]) -> _Choice | None:
    """``value`` as one of ``choices`` (None when it is none of them)."""
    return next((choice for choice in choices if choice == value), None)


def _local_name(username: str) -> str:
    """``HOST\\user`` / ``.\\user`` -> ``user`` (the local account ADSI binds to)."""
    return username.rsplit("\\", 1)[-1]


def _name_problem(username: str, endpoint: Endpoint) -> str:
    """Why ``username`` cannot name a local account of ``endpoint`` ('' when it can)."""
    prefix, _, name = username.rpartition("\\")
    if not name or set(name) & _FORBIDDEN_NAME_CHARS:
        return "not a valid Windows account name"
    host = endpoint.name.split(".", 1)[0].lower()
    if "\\" in username and prefix.lower() not in (".", host, endpoint.address.lower()):
        # CORP\Administrator is a domain account: resetting the local namesake would be wrong
        return (f"not a local account of this device (domain {prefix!r}); this target changes "
                "local accounts only")
    return ""


class WinRMTarget:
    """Local Windows accounts through WS-Management (HTTP/HTTPS, Basic/NTLM)."""

    protocol = "winrm"

    # -- connection ----------------------------------------------------------------------
    @staticmethod
    def _scheme(settings: dict) -> str:
        scheme = str(settings.get("scheme") or "https").strip().lower()
        if scheme not in SCHEMES:
            raise _BadSetting(f"setting scheme must be https or http, not {settings.get('scheme')!r}")
        return scheme

    @staticmethod
    def url(endpoint: Endpoint) -> str:
        settings = endpoint.settings or {}
        scheme = WinRMTarget._scheme(settings)
        port = int(settings.get("port") or endpoint.port or 0)
        if not settings.get("port"):
            # the device's port was the other scheme's default (a platform default)
            if scheme == "https" and port == 5985:
                port = 5986
            elif scheme == "http" and port == 5986:
                port = 5985
        port = port or (5986 if scheme == "https" else 5985)
        path = "/" + str(settings.get("path") or "/wsman").lstrip("/")
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        return f"{scheme}://{host}:{port}{path}"

    def check_settings(self, endpoint: Endpoint) -> None:
        """Raise ``_BadSetting`` for a setting this target does not accept."""
        self._checked(endpoint.settings or {})

    def _checked(self, settings: dict) -> tuple[Transport, Validation, Encryption]:
        """The transport, certificate validation and message encryption settings, checked."""
        self._scheme(settings)
        validation = _one_of(str(settings.get("server_cert_validation") or "validate").lower(),
                             VALIDATIONS)
        if validation is None:
            raise _BadSetting("setting server_cert_validation must be validate or ignore, not "
                              f"{settings.get('server_cert_validation')!r}")
        transport = _one_of(str(settings.get("transport") or "ntlm").lower(), TRANSPORTS)
        if transport is None:
            raise _BadSetting(f"setting transport must be one of {', '.join(TRANSPORTS)}, not "
                              f"{settings.get('transport')!r}")
        encryption = _one_of(str(settings.get("message_encryption") or "auto").lower(), ENCRYPTIONS)
        if encryption is None:
            raise _BadSetting("setting message_encryption must be auto, always or never, not "
                              f"{settings.get('message_encryption')!r}")
        return transport, validation, encryption

    def _warn_insecure(self, endpoint: Endpoint, url: str, transport: str,
                       validation: str) -> None:
        if url.startswith("http:"):
            what = ("the credentials travel in cleartext" if transport in ("basic", "plaintext")
                    else "the server is not authenticated")
            log.warning("winrm: device %s (%s): scheme is http: no TLS, %s", endpoint.name, url,
                        what)
        elif validation == "ignore":
            log.warning("winrm: device %s (%s): server_cert_validation is ignore: the server's "
                        "certificate is not checked, the server is not authenticated",
                        endpoint.name, url)

    def _protocol(self, endpoint: Endpoint, login: Login, timeout: float):
        from winrm.protocol import Protocol

        settings = endpoint.settings or {}
        transport, validation, encryption = self._checked(settings)
        operation = max(1, min(20, math.ceil(timeout)))
        read = max(operation + 1, math.ceil(timeout))
        username: str | bytes = login.username
        secret: str | bytes = login.secret
        if transport in ("basic", "plaintext", "ssl"):  # RFC 7617 UTF-8, not requests' latin-1
            username, secret = login.username.encode("utf-8"), login.secret.encode("utf-8")
        ca = (settings.get("ca_certs_file") or settings.get("ca_trust_path")
              or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None)
        url = self.url(endpoint)
        self._warn_insecure(endpoint, url, transport, validation)
        return Protocol(
            url,
            transport=transport,
            # pywinrm hands these to requests, which takes bytes (the UTF-8 Basic credentials)
            username=username,  # type: ignore[arg-type]
            password=secret,  # type: ignore[arg-type]
            server_cert_validation=validation,
            # pywinrm's annotation omits None, which its transport reads as "no CA override"
            ca_trust_path=ca,  # type: ignore[arg-type]
            message_encryption=encryption,
            read_timeout_sec=read,
            operation_timeout_sec=operation,
            proxy=settings.get("proxy") or None,
        )

    def _classify(self, exc: BaseException, endpoint: Endpoint,
                  secrets: Iterable[str | None]) -> tuple[type[TargetError], str]:
        """A pywinrm/requests error as (target error class, message without any secret)."""
        import requests
        from winrm.exceptions import (
            InvalidCredentialsError,
            WinRMError,
            WinRMTransportError,
            WSManFaultError,
        )

        if isinstance(exc, _NotConnected):
            exc = exc.cause
        if isinstance(exc, _Deadline):
            return Unreachable, "the command did not finish within the timeout"
        if isinstance(exc, _BadSetting):
            return InvalidSetting, str(exc)
        if isinstance(exc, InvalidCredentialsError):
            return AuthenticationFailed, "WinRM refused the credentials"
        if isinstance(exc, requests.exceptions.SSLError):
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                found = re.search(r"certificate verify failed: ([^(\]'\"]+)", text)
                reason = f" ({found.group(1).strip()})" if found else ""
                return UntrustedCertificate, f"the WinRM server's TLS certificate is not trusted{reason}"
            return TLSFailed, (f"no TLS handshake with WinRM at {self.url(endpoint)}: does the "
                               "listener speak HTTPS?")
        if isinstance(exc, requests.exceptions.Timeout):
            return Unreachable, "WinRM request timed out"
        if isinstance(exc, (requests.exceptions.ConnectionError, OSError)):
            return Unreachable, f"cannot connect to WinRM at {self.url(endpoint)}"
        if isinstance(exc, WSManFaultError):
            reason = _scrub(str(exc.reason or ""), secrets)
            if exc.wsman_fault_code == _ACCESS_DENIED:
                return ChangeRefused, f"WinRM access denied: {reason}"
            return ChangeRefused, f"WS-Management fault {exc.wsman_fault_code}: {reason}"
        if isinstance(exc, WinRMTransportError):
            if exc.code >= 500:
                return Unreachable, f"WinRM answered HTTP {exc.code}"
            return ChangeRefused, f"WinRM answered HTTP {exc.code}"
        if isinstance(exc, WinRMError):
            return TargetError, f"WinRM error: {_scrub(str(exc), secrets)}"
        return TargetError, f"unexpected {type(exc).__name__}"

    def _run(self, proto, command: str, arguments: list[str], stdin: bytes | None,
             deadline: float) -> tuple[bytes, bytes, int]:
        """Run one command in a fresh shell, feeding ``stdin``; bounded by ``deadline``."""
        from winrm.exceptions import WinRMOperationTimeoutError

        try:
            shell = proto.open_shell(codepage=65001, noprofile=True)
        except Exception as exc:
            raise _NotConnected(exc) from None
        command_id = None
        try:
            command_id = proto.run_command(shell, command, arguments)
            if stdin is not None:
                chunks = [stdin[i:i + _STDIN_CHUNK] for i in range(0, len(stdin), _STDIN_CHUNK)]
                for i, chunk in enumerate(chunks or [b""]):
                    proto.send_command_input(shell, command_id, chunk,
                                             end=i == max(len(chunks), 1) - 1)
            out, err = [], []
            while True:
                try:
                    stdout, stderr, code, done = proto.get_command_output_raw(shell, command_id)
                except WinRMOperationTimeoutError:
                    if time.monotonic() > deadline:
                        raise _Deadline from None
                    continue
                out.append(stdout)
                err.append(stderr)
                if done:
                    return b"".join(out), b"".join(err), code
                if time.monotonic() > deadline:
                    raise _Deadline
        finally:
            try:
                if command_id is not None:
                    proto.cleanup_command(shell, command_id)
                proto.close_shell(shell)
            except Exception:  # best effort: the shell times out on its own
                log.debug("closing the WinRM shell failed", exc_info=False)

    @staticmethod
    def _outcomes(stdout: bytes, count: int) -> dict[int, str | None]:
        """``PAMFLOW-OK i`` / ``PAMFLOW-ERR i reason`` lines -> {i: None | reason}."""
        found: dict[int, str | None] = {}
        for line in stdout.decode("utf-8", "replace").splitlines():
            parts = line.strip().split(" ", 2)
            if len(parts) >= 2 and parts[0] in ("PAMFLOW-OK", "PAMFLOW-ERR") \
                    and parts[1].isdigit() and int(parts[1]) < count:
                found[int(parts[1])] = None if parts[0] == "PAMFLOW-OK" else (
                    parts[2] if len(parts) > 2 else "unknown error")
        return found

    # -- PasswordTarget ------------------------------------------------------------------
    def apply(self, endpoint: Endpoint, changes: list[Change], admin: Login | None,
              timeout: float) -> list[ChangeResult]:
        """Reset (admin) or change (self) each account's password; see the module doc."""
        results: dict[int, ChangeResult] = {}
        valid: list[tuple[int, Change]] = []
        try:
            self.check_settings(endpoint)
        except _BadSetting as exc:
            return [ChangeResult(c.username, InvalidSetting(
                str(exc), device=endpoint.name, account=c.username, step="validate"))
                for c in changes]
        for i, change in enumerate(changes):
            problem = _name_problem(change.username, endpoint)
            if problem:
                results[i] = ChangeResult(change.username, ChangeRefused(
                    problem, device=endpoint.name, account=change.username, step="validate"))
            elif admin is None and not change.current_secret:
                results[i] = ChangeResult(change.username, ChangeRefused(
                    "no current password for a self-service change", device=endpoint.name,
                    account=change.username, step="validate"))
            else:
                valid.append((i, change))
        if admin is not None and valid:
            self._apply_admin(endpoint, valid, admin, timeout, results)
        elif valid:
            for i, change in valid:
                results[i] = self._apply_self(endpoint, change, timeout)
            down = [e for i, _ in valid if isinstance(e := results[i].error, Unreachable)]
            if len(down) == len(valid):
                raise down[0]
        return [results[i] for i in range(len(changes))]

    def _apply_admin(self, endpoint: Endpoint, valid: list[tuple[int, Change]], admin: Login,
                     timeout: float, results: dict[int, ChangeResult]) -> None:
        secrets = [admin.secret] + [c.new_secret for _, c in valid]
        stdin = b"".join(_b64(_local_name(c.username)) + b"\r\n" + _b64(c.new_secret) + b"\r\n"
                         for _, c in valid)
        deadline = time.monotonic() + timeout * (1 + len(valid) / 100)
        step = "apply as admin"
        try:
            proto = self._protocol(endpoint, admin, timeout)
            stdout, stderr, code = self._run(
                proto, "powershell.exe",
                ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
                 "-EncodedCommand", _encoded(RESET_SCRIPT)], stdin, deadline)
        except Exception as exc:
            cls, message = self._classify(exc, endpoint, secrets)
            if isinstance(exc, _NotConnected) and issubclass(cls, Unreachable):
                step = "connect"  # no shell, no command: nothing ran
            if issubclass(cls, (Unreachable, AuthenticationFailed)):
                raise cls(message, device=endpoint.name, account=admin.username,
                          step=step) from None
            for i, change in valid:  # e.g. the admin may not open a shell: each is refused
                results[i] = ChangeResult(change.username, cls(
                    f"{message} (admin {admin.username})", device=endpoint.name,
                    account=change.username, step=step))
            return
        outcomes = self._outcomes(stdout, len(valid))
        for n, (i, change) in enumerate(valid):
            results[i] = ChangeResult(change.username, self._outcome_error(
                outcomes, n, bool(outcomes), stderr, code, endpoint, change, secrets))

    def _apply_self(self, endpoint: Endpoint, change: Change, timeout: float) -> ChangeResult:
        secrets = [change.current_secret, change.new_secret]
        stdin = (_b64(_local_name(change.username)) + b"\r\n" + _b64(change.current_secret or "")
                 + b"\r\n" + _b64(change.new_secret) + b"\r\n")
        try:
            proto = self._protocol(endpoint, Login(change.username, change.current_secret or ""),
                                   timeout)
            stdout, stderr, code = self._run(
                proto, "powershell.exe",
                ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
                 "-EncodedCommand", _encoded(CHANGE_SCRIPT)], stdin, time.monotonic() + timeout)
        except Exception as exc:
            cls, message = self._classify(exc, endpoint, secrets)
            step = ("connect" if isinstance(exc, _NotConnected) and issubclass(cls, Unreachable)
                    else "apply as the account")
            return ChangeResult(change.username, cls(message, device=endpoint.name,
                                                     account=change.username, step=step))
        outcomes = self._outcomes(stdout, 1)
        return ChangeResult(change.username, self._outcome_error(
            outcomes, 0, bool(outcomes), stderr, code, endpoint, change, secrets))

    @staticmethod
    def _outcome_error(outcomes: dict[int, str | None], n: int, script_ran: bool,
                       stderr: bytes, code: int, endpoint: Endpoint, change: Change,
                       secrets: Sequence[str | None]) -> TargetError | None:
        where = {"device": endpoint.name, "account": change.username, "step": "apply"}
        if n in outcomes:
            reason = outcomes[n]
            if reason is None:
                return None
            reason = _scrub(reason, secrets)
            if "password is not correct" in reason:
                return AuthenticationFailed(f"Windows refused the current password: {reason}",
                                            **where)
            return ChangeRefused(f"Windows refused the change: {reason}", **where)
        if script_ran:  # the script stopped before reporting this account: state unknown
            return Unreachable("no outcome reported for this account", **where)
        detail = _scrub(stderr.decode("utf-8", "replace"), secrets) or "no output"
        return ChangeRefused(f"the password script failed (exit {code}): {detail}", **where)

    def verify(self, endpoint: Endpoint, login: Login, timeout: float) -> bool:
        """Log in as ``login`` and run ``whoami``: False on HTTP 401."""
        from winrm.exceptions import InvalidCredentialsError, WSManFaultError

        try:
            proto = self._protocol(endpoint, login, timeout)
            self._run(proto, "whoami", [], None, time.monotonic() + timeout)
            return True
        except Exception as exc:
            cause = exc.cause if isinstance(exc, _NotConnected) else exc
            if isinstance(cause, InvalidCredentialsError):
                return False
            if isinstance(cause, WSManFaultError) and cause.wsman_fault_code == _ACCESS_DENIED:
                return True  # authenticated, not allowed a shell
            cls, message = self._classify(exc, endpoint, [login.secret])
            step = ("validate" if isinstance(exc, _BadSetting) else "connect"
                    if isinstance(exc, _NotConnected) and issubclass(cls, Unreachable) else "verify")
            raise cls(message, device=endpoint.name, account=login.username, step=step) from None
