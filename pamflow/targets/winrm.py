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

Endpoint.settings keys (all optional):

``scheme``                 ``http`` or ``https``; default ``https`` when the port is 5986,
                           else ``http``.
``port``                   overrides Endpoint.port; default Endpoint.port, else 5985/5986
                           (an https device given the HTTP default 5985 uses 5986).
``path``                   the WS-Management path, default ``/wsman``.
``transport``              ``ntlm`` (default) or ``basic`` (or another pywinrm transport:
                           ``kerberos``, ``credssp``, ``certificate``). Basic sends the
                           credentials UTF-8 encoded.
``server_cert_validation`` ``validate`` (default) or ``ignore`` (HTTPS only).
``ca_trust_path``          a CA bundle (PEM file) trusted for the HTTPS certificate;
                           default ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else certifi.
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
import time
from collections.abc import Iterable

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

_FORBIDDEN_NAME_CHARS = set('"/\\[]:;|=,+*?<>@\r\n')
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


class _Deadline(Exception):
    """The command outlived the device's deadline (its outcome is unknown)."""


class UntrustedCertificate(Unreachable):
    """The HTTPS certificate failed validation: nothing was sent; retrying will not help."""

    retryable = False


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


def _local_name(username: str) -> str:
    """``HOST\\user`` / ``.\\user`` -> ``user`` (the local account ADSI binds to)."""
    return username.rsplit("\\", 1)[-1]


class WinRMTarget:
    """Local Windows accounts through WS-Management (HTTP/HTTPS, Basic/NTLM)."""

    protocol = "winrm"

    # -- connection ----------------------------------------------------------------------
    @staticmethod
    def url(endpoint: Endpoint) -> str:
        settings = endpoint.settings or {}
        port = int(settings.get("port") or endpoint.port or 0)
        scheme = str(settings.get("scheme") or ("https" if port == 5986 else "http")).lower()
        if scheme not in ("http", "https"):
            raise _BadSetting(f"unknown WinRM scheme {scheme!r}")
        if scheme == "https" and port == 5985 and not settings.get("port"):
            port = 5986  # the protocol's default HTTP port came with an https device
        port = port or (5986 if scheme == "https" else 5985)
        path = "/" + str(settings.get("path") or "/wsman").lstrip("/")
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        return f"{scheme}://{host}:{port}{path}"

    def _protocol(self, endpoint: Endpoint, login: Login, timeout: float):
        from winrm.protocol import Protocol

        settings = endpoint.settings or {}
        operation = max(1, min(20, math.ceil(timeout)))
        read = max(operation + 1, math.ceil(timeout))
        transport = str(settings.get("transport") or "ntlm").lower()
        username: str | bytes = login.username
        secret: str | bytes = login.secret
        if transport in ("basic", "plaintext", "ssl"):  # RFC 7617 UTF-8, not requests' latin-1
            username, secret = login.username.encode("utf-8"), login.secret.encode("utf-8")
        ca = (settings.get("ca_trust_path") or os.environ.get("REQUESTS_CA_BUNDLE")
              or os.environ.get("CURL_CA_BUNDLE") or None)
        return Protocol(
            self.url(endpoint),
            transport=transport,
            username=username,
            password=secret,
            server_cert_validation=str(settings.get("server_cert_validation") or "validate"),
            ca_trust_path=ca,
            message_encryption=str(settings.get("message_encryption") or "auto"),
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

        if isinstance(exc, _Deadline):
            return Unreachable, "the command did not finish within the timeout"
        if isinstance(exc, _BadSetting):
            return TargetError, str(exc)
        if isinstance(exc, InvalidCredentialsError):
            return AuthenticationFailed, "WinRM refused the credentials"
        if isinstance(exc, requests.exceptions.SSLError):
            return UntrustedCertificate, "TLS handshake or certificate validation failed"
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

    def _translate(self, exc: BaseException, endpoint: Endpoint, account: str, step: str,
                   secrets: Iterable[str | None]) -> TargetError:
        cls, message = self._classify(exc, endpoint, secrets)
        return cls(message, device=endpoint.name, account=account, step=step)

    def _run(self, proto, command: str, arguments: list[str], stdin: bytes | None,
             deadline: float) -> tuple[bytes, bytes, int]:
        """Run one command in a fresh shell, feeding ``stdin``; bounded by ``deadline``."""
        from winrm.exceptions import WinRMOperationTimeoutError

        shell = proto.open_shell(codepage=65001, noprofile=True)
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
        for i, change in enumerate(changes):
            name = _local_name(change.username)
            if not name or set(name) & _FORBIDDEN_NAME_CHARS:
                results[i] = ChangeResult(change.username, ChangeRefused(
                    "not a valid Windows account name", device=endpoint.name,
                    account=change.username, step="apply"))
            elif admin is None and not change.current_secret:
                results[i] = ChangeResult(change.username, ChangeRefused(
                    "no current password for a self-service change", device=endpoint.name,
                    account=change.username, step="apply"))
            else:
                valid.append((i, change))
        if admin is not None and valid:
            self._apply_admin(endpoint, valid, admin, timeout, results)
        elif valid:
            for i, change in valid:
                results[i] = self._apply_self(endpoint, change, timeout)
            errors = [results[i].error for i, _ in valid]
            if all(isinstance(e, Unreachable) for e in errors):
                raise errors[0]
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
            return ChangeResult(change.username, self._translate(
                exc, endpoint, change.username, "apply as the account", secrets))
        outcomes = self._outcomes(stdout, 1)
        return ChangeResult(change.username, self._outcome_error(
            outcomes, 0, bool(outcomes), stderr, code, endpoint, change, secrets))

    @staticmethod
    def _outcome_error(outcomes: dict[int, str | None], n: int, script_ran: bool,
                       stderr: bytes, code: int, endpoint: Endpoint, change: Change,
                       secrets: list[str | None]) -> TargetError | None:
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
        except InvalidCredentialsError:
            return False
        except WSManFaultError as exc:
            if exc.wsman_fault_code == _ACCESS_DENIED:  # authenticated, not allowed a shell
                return True
            raise self._translate(exc, endpoint, login.username, "verify",
                                  [login.secret]) from None
        except Exception as exc:
            raise self._translate(exc, endpoint, login.username, "verify",
                                  [login.secret]) from None
