"""Passwords on SSH targets (paramiko): ``sudo chpasswd`` through an admin, or ``passwd`` as the account.

Constructing it::

    SSHTarget()                       # host keys in the configured store (pamflow.db.store())
    SSHTarget(engine)                 # host keys in that store (StoreHostKeys(engine))
    SSHTarget(host_keys=MemoryHostKeys())   # anything with get()/record() (tests, tools)

One ``SSHTarget`` is shared by every thread of an executor: it keeps no per-call state.

Endpoint settings (``Device.settings``; none of them secret):

- ``sudo``: ``"nopasswd"`` (default: ``sudo -n chpasswd``, the sudoers rule needs no
  password), ``"password"`` (sudo asks for the admin's own password; it is sent on stdin
  after sudo's prompt, never on a command line) or ``"none"`` (the admin is root).
- ``chpasswd``: path of chpasswd on the target: ``/usr/sbin/chpasswd`` (default),
  ``/usr/bin/chpasswd`` or ``/sbin/chpasswd``.
- ``passwd``: passwd for self-service changes: ``passwd`` (default, found on the
  account's PATH), ``/usr/bin/passwd`` or ``/bin/passwd``.

These settings become part of a remote command line, so only the values listed are
accepted: anything else is refused at step ``validate``, before connecting, naming the
setting (device data must not choose what runs on a target as root). The command lines are
built from those values, shell-quoted all the same.

``apply`` with an admin opens ONE connection as the admin and feeds every change of the
device to a single ``chpasswd`` as ``user:password`` lines on stdin. chpasswd names the
lines it could not change; those accounts get an error in their ``ChangeResult``. When the
batch fails without naming lines (or the target's chpasswd says it ignored every change),
each account is changed by its own ``chpasswd`` call so a bad one cannot hide the others.
Without an admin each account logs in with its current secret and runs ``passwd`` on a
pty, answering its prompts.

Host keys: a key pinned for a device's port before the first connection
(``pamflow.hostkeys``, ``pamflow devices pin-host-key``) is the only one accepted there;
without one, the first contact records the key offered (``HostKey`` table, trust on first
use). Either way a different key raises ``HostKeyChanged`` at step ``host key`` *before*
any password is sent. Only the recorded key types are offered in the negotiation, as
OpenSSH does with known_hosts.

Errors name the device, account and step and never carry a secret: every text that comes
back from the target is scrubbed of the secrets in play before it goes into an exception.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from secrets import token_hex
from typing import Protocol

import paramiko
from sqlmodel import col

from ..faults import checkpoint
from .base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    ChangeResult,
    Endpoint,
    HostKeyChanged,
    InvalidSetting,
    Login,
    TargetError,
    Unreachable,
)

log = logging.getLogger(__name__)
# paramiko logs two INFO lines per connection; ours go under this name, quiet by default
TRANSPORT_LOG = f"{__name__}.transport"
if logging.getLogger(TRANSPORT_LOG).level == logging.NOTSET:
    logging.getLogger(TRANSPORT_LOG).setLevel(logging.WARNING)
SELF_SERVICE_PARALLEL = 4  # passwd sessions at once on one device

SUDO_PROMPT = "PAMFLOW-SUDO-PROMPT:"
SUDO_OK = "PAMFLOW-SUDO-OK"
INPUT_CUT = "pamflow: the input arrived incomplete; nothing was changed"
INPUT_CUT_STATUS = 75
# chpasswd hashes one password per line on the target: allow for it on top of the timeout
PER_LINE_SECONDS = 0.25

# the only values the device settings may take (they end up in a remote command line)
SUDO_MODES = ("nopasswd", "password", "none")
CHPASSWD_PATHS = ("/usr/sbin/chpasswd", "/usr/bin/chpasswd", "/sbin/chpasswd")
PASSWD_COMMANDS = ("passwd", "/usr/bin/passwd", "/bin/passwd")

# Cheap for a Python client: AEAD (no Python-side HMAC), curve25519, ed25519 first.
_CIPHERS = ("aes128-gcm@openssh.com", "aes128-ctr", "aes256-gcm@openssh.com", "aes256-ctr")
_KEX = ("curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "diffie-hellman-group14-sha256")
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
# host key name (as recorded) -> algorithm names that negotiate it
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


class InputCut(TargetError):
    """The change's input arrived incomplete and the target refused to run it: nothing was
    changed, and trying again may work."""

    retryable = True


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeys(Protocol):
    """Where recorded host keys live: ``{key_type: key_base64}`` per (device, port)."""

    def get(self, device_id: int, port: int) -> dict[str, str]: ...

    def record(self, device_id: int, port: int, key_type: str, key_base64: str,
               fingerprint: str) -> dict[str, str]:
        """Record a first-contact key; return the keys now recorded (another writer may win)."""
        ...


class MemoryHostKeys:
    """Host keys in memory (tests, one-off tools)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[int, int], dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, device_id: int, port: int) -> dict[str, str]:
        with self._lock:
            return dict(self._keys.get((device_id, port), {}))

    def record(self, device_id: int, port: int, key_type: str, key_base64: str,
               fingerprint: str) -> dict[str, str]:
        with self._lock:
            keys = self._keys.setdefault((device_id, port), {})
            keys.setdefault(key_type, key_base64)
            return dict(keys)


class StoreHostKeys:
    """Host keys in the store's ``host_key`` table, cached in memory for ``max_age`` seconds.

    A recorded key never changes by itself; an operator who accepts a new key deletes the
    row or pins another key. A running target sees that within ``max_age`` seconds, and
    re-reads the table at once before it reports a changed key, so the cache never makes a
    stale refusal permanent.
    """

    def __init__(self, engine=None, *, max_age: float = 30.0) -> None:
        self._engine = engine
        self.max_age = max_age
        self._cache: dict[tuple[int, int], tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    @property
    def engine(self):
        if self._engine is None:
            from pamflow.db import store

            self._engine = store()
        return self._engine

    def _load(self, device_id: int, port: int) -> dict[str, str]:
        from sqlmodel import Session, select

        from pamflow.models import HostKey

        with Session(self.engine) as s:
            rows = s.exec(select(HostKey).where(col(HostKey.device_id) == device_id,
                                                col(HostKey.port) == port)).all()
            return {r.key_type: r.key_base64 for r in rows}

    def get(self, device_id: int, port: int, *, fresh: bool = False) -> dict[str, str]:
        key = (device_id, port)
        with self._lock:
            cached = self._cache.get(key)
            if not fresh and cached and time.monotonic() - cached[0] < self.max_age:
                return dict(cached[1])
        keys = self._load(device_id, port)
        with self._lock:
            if keys:
                self._cache[key] = (time.monotonic(), keys)
            else:
                self._cache.pop(key, None)
        return dict(keys)

    def record(self, device_id: int, port: int, key_type: str, key_base64: str,
               fingerprint: str) -> dict[str, str]:
        import sqlalchemy as sa
        from sqlmodel import Session

        from pamflow.models import HostKey

        with self._lock:  # one writer per process; other processes: the unique constraint
            try:
                with Session(self.engine) as s:
                    s.add(HostKey(device_id=device_id, port=port, key_type=key_type,
                                  key_base64=key_base64, fingerprint=fingerprint))
                    s.commit()
                log.info("ssh: recorded host key %s %s of device %s port %s",
                         key_type, fingerprint, device_id, port)
            except sa.exc.IntegrityError:
                pass  # another executor recorded it first: compare with theirs
            self._cache.pop((device_id, port), None)
        return self.get(device_id, port)


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _tail(text: str, secrets: Iterable[str | None], lines: int = 3) -> str:
    """The last meaningful lines of a target's output, secrets removed."""
    kept = [ln.strip() for ln in text.replace("\r", "\n").split("\n")]
    kept = [ln for ln in kept if ln and SUDO_PROMPT not in ln and SUDO_OK not in ln]
    return _scrub(" | ".join(kept[-lines:]), secrets)[:500]


class SSHTarget:
    """The SSH password target (see the module docstring)."""

    protocol = "ssh"

    def __init__(self, engine=None, *, host_keys: HostKeys | None = None) -> None:
        self.host_keys: HostKeys = host_keys if host_keys is not None else StoreHostKeys(engine)

    # ------------------------------------------------------------------ connection
    def _connect(self, endpoint: Endpoint, timeout: float, step: str,
                 account: str = "") -> paramiko.Transport:
        """An SSH transport whose host key has been checked; not yet authenticated."""
        where = {"device": endpoint.name, "account": account, "step": step}
        addr = f"{endpoint.address}:{endpoint.port}"
        recorded = self.host_keys.get(endpoint.device_id, endpoint.port)
        try:
            sock = socket.create_connection((endpoint.address, endpoint.port), timeout=timeout)
        except TimeoutError:
            raise Unreachable(f"connection to {addr} timed out after {timeout:g}s", **where) from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {addr}: {exc.strerror or type(exc).__name__}",
                              **where) from None
        transport = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock)
            transport.set_log_channel(TRANSPORT_LOG)
            transport.banner_timeout = transport.handshake_timeout = timeout
            transport.auth_timeout = timeout
            opts = transport.get_security_options()
            opts.ciphers = [c for c in _CIPHERS if c in opts.ciphers] or opts.ciphers
            opts.kex = [k for k in _KEX if k in opts.kex] or opts.kex
            if recorded:
                wanted = [a for t in recorded for a in _KEY_ALGORITHMS.get(t, (t,))]
                opts.key_types = [k for k in wanted if k in opts.key_types] or opts.key_types
            else:
                opts.key_types = [k for k in _KEY_TYPES if k in opts.key_types] or opts.key_types
            transport.start_client(timeout=timeout)
            if not (transport.is_active() and getattr(transport, "initial_kex_done", True)):
                raise paramiko.SSHException(f"no SSH negotiation within {timeout:g}s")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if transport is not None:
                transport.close()
            else:
                sock.close()
            text = str(exc) or type(exc).__name__
            if recorded and "host key" in text.lower():
                raise HostKeyChanged(
                    f"SSH host key of {addr} changed: the server no longer offers the recorded "
                    f"{'/'.join(sorted(recorded))} key; nothing was sent",
                    **{**where, "step": "host key"}) from None
            if "protocol banner" in text or "no SSH negotiation" in text:
                # paramiko words a silent server either way, depending on where it waited
                text = f"timed out: no SSH banner or negotiation within {timeout:g}s"
            raise Unreachable(f"SSH negotiation with {addr} failed: {text}", **where) from None
        try:
            self._check_host_key(endpoint, transport.get_remote_server_key(), recorded, where)
        except BaseException:
            transport.close()
            raise
        return transport

    def _check_host_key(self, endpoint: Endpoint, key: paramiko.PKey, recorded: dict[str, str],
                        where: dict) -> None:
        key_type, key_b64 = key.get_name(), key.get_base64()
        if recorded.get(key_type) == key_b64:
            return
        if not recorded:
            recorded = self.host_keys.record(endpoint.device_id, endpoint.port, key_type, key_b64,
                                             fingerprint(key))
            if recorded.get(key_type) == key_b64:
                return
        elif isinstance(self.host_keys, StoreHostKeys):
            # an operator may have accepted a new key since we cached the old one
            recorded = self.host_keys.get(endpoint.device_id, endpoint.port, fresh=True)
            if recorded.get(key_type) == key_b64:
                return
            if not recorded:
                self._check_host_key(endpoint, key, recorded, where)
                return
        old = recorded.get(key_type)
        old_fp = (f"{key_type} " + fingerprint(paramiko.PKey.from_type_string(
            key_type, base64.b64decode(old)))) if old else f"no {key_type} key"
        raise HostKeyChanged(
            f"SSH host key of {endpoint.address}:{endpoint.port} changed: recorded {old_fp}, "
            f"offered {key_type} {fingerprint(key)}; nothing was sent. Remove the recorded key "
            "only if the change is expected", **{**where, "step": "host key"})

    def _login(self, endpoint: Endpoint, login: Login, timeout: float, step: str
               ) -> paramiko.Transport:
        """A transport authenticated as ``login``; AuthenticationFailed when refused."""
        transport = self._connect(endpoint, timeout, step, login.username)
        try:
            ok = self._auth(transport, endpoint, login, step)
        except BaseException:
            transport.close()
            raise
        if not ok:
            transport.close()
            raise AuthenticationFailed("the target refused the password", device=endpoint.name,
                                       account=login.username, step=step)
        return transport

    @staticmethod
    def _auth(transport: paramiko.Transport, endpoint: Endpoint, login: Login, step: str) -> bool:
        where = {"device": endpoint.name, "account": login.username, "step": step}
        try:
            transport.auth_password(login.username, login.secret)
            return transport.is_authenticated()
        except paramiko.BadAuthenticationType as exc:
            raise TargetError("the server does not offer password authentication (allowed: "
                              f"{', '.join(exc.allowed_types) or 'none'})", **where) from None
        except paramiko.AuthenticationException as exc:
            if not transport.is_active() or "timeout" in str(exc).lower():
                raise Unreachable(f"SSH authentication got no answer ({exc})", **where) from None
            return False
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"SSH connection lost during authentication ({type(exc).__name__})",
                              **where) from None

    # ------------------------------------------------------------------ verify
    def verify(self, endpoint: Endpoint, login: Login, timeout: float) -> bool:
        """True when ``login`` authenticates by password, False when the server refuses it."""
        transport = self._connect(endpoint, timeout, "verify", login.username)
        try:
            return self._auth(transport, endpoint, login, "verify")
        finally:
            transport.close()

    # ------------------------------------------------------------------ apply
    def apply(self, endpoint: Endpoint, changes: list[Change], admin: Login | None,
              timeout: float) -> list[ChangeResult]:
        """Set every change's new secret (see the module docstring)."""
        if not changes:
            return []
        problem = _settings(endpoint)
        if isinstance(problem, str):
            return [ChangeResult(c.username, InvalidSetting(
                problem, device=endpoint.name, account=c.username, step="validate"))
                for c in changes]
        results: dict[str, ChangeResult] = {}
        valid: list[Change] = []
        for change in changes:
            problem = self._malformed(change, admin is None)
            if problem:
                results[change.username] = ChangeResult(change.username, ChangeRefused(
                    problem, device=endpoint.name, account=change.username, step="validate"))
            else:
                valid.append(change)
        if valid:
            done = (self._apply_admin(endpoint, valid, admin, timeout) if admin is not None
                    else self._apply_self(endpoint, valid, timeout))
            results.update((r.username, r) for r in done)
        return [results[c.username] for c in changes]

    @staticmethod
    def _malformed(change: Change, self_service: bool) -> str:
        if not change.username or any(ch in change.username for ch in ":\n\r\0"):
            return "account name is empty or contains ':' or a line break"
        if not change.new_secret or any(ch in change.new_secret for ch in "\n\r\0"):
            return "new password is empty or contains a line break"
        if self_service and not change.current_secret:
            return "no current password for a self-service change (and no admin account)"
        return ""

    # -- through the admin: sudo chpasswd
    def _chpasswd_command(self, endpoint: Endpoint, marker: str) -> tuple[str, str]:
        """(sudo mode, remote command) from the checked settings (see ``check_settings``).

        The command runs chpasswd only on input whose last line is ``marker``: a connection
        dropped while the lines were in flight would otherwise hand chpasswd a last line cut
        short, setting a password nobody knows. The lines stay in the shell and in pipes
        (``printf`` is a builtin): never in argv. It runs under ``sh -c`` whatever the
        admin's login shell is."""
        mode, chpasswd, _passwd = check_settings(endpoint)
        chpasswd = shlex.quote(chpasswd)
        run = chpasswd if mode == "none" else f"sudo -n {chpasswd}"
        script = (f'b=$(cat); if [ "$(printf %s "$b" | tail -n 1)" != "{marker}" ]; then '
                  f'echo "{INPUT_CUT}" >&2; exit {INPUT_CUT_STATUS}; fi; '
                  f'printf "%s\\n" "$b" | sed "\\$d" | {run}')
        if mode == "password":
            script = (f"sudo -S -p {shlex.quote(SUDO_PROMPT)} -v && echo {SUDO_OK} >&2 && "
                      f"{{ {script}; }}")
        return mode, f"sh -c {shlex.quote(script)}"

    def _apply_admin(self, endpoint: Endpoint, changes: list[Change], admin: Login,
                     timeout: float) -> list[ChangeResult]:
        transport = self._login(endpoint, admin, timeout, "admin login")
        try:
            status, output = self._chpasswd(transport, endpoint, changes, admin, timeout)
            secrets = [admin.secret] + [c.new_secret for c in changes]
            if status == 0:
                log.info("ssh: chpasswd on %s changed %d account(s)", endpoint.name, len(changes))
                return [ChangeResult(c.username) for c in changes]
            failed = {int(n) for n in re.findall(r"line (\d+)", output)}
            whole = (not failed or "changes ignored" in output
                     or any(n < 1 or n > len(changes) for n in failed))
            if len(changes) > 1 and whole:
                log.warning("ssh: chpasswd batch on %s failed as a whole (%s); one call per "
                            "account", endpoint.name, _tail(output, secrets, 1))
                results = []
                for change in changes:
                    try:
                        st, out = self._chpasswd(transport, endpoint, [change], admin, timeout)
                    except TargetError as exc:  # keep what the earlier calls did
                        results.append(ChangeResult(change.username, exc))
                        continue
                    results.append(self._chpasswd_result(endpoint, change, st, out, secrets))
                return results
            if not failed:
                failed = set(range(1, len(changes) + 1))
            results = []
            for n, change in enumerate(changes, 1):
                if n in failed:
                    mine = "\n".join(ln for ln in output.splitlines() if f"line {n}," in ln
                                     or f"line {n}:" in ln) or output
                    results.append(self._chpasswd_result(endpoint, change, status, mine, secrets))
                else:
                    results.append(ChangeResult(change.username))
            log.warning("ssh: chpasswd on %s: %d of %d account(s) refused", endpoint.name,
                        len(failed), len(changes))
            return results
        finally:
            transport.close()

    @staticmethod
    def _chpasswd_result(endpoint: Endpoint, change: Change, status: int, output: str,
                         secrets: list[str]) -> ChangeResult:
        if status == 0:
            return ChangeResult(change.username)
        return ChangeResult(change.username, ChangeRefused(
            f"chpasswd refused the change (exit {status}): {_tail(output, secrets) or 'no message'}",
            device=endpoint.name, account=change.username, step="chpasswd"))

    def _chpasswd(self, transport: paramiko.Transport, endpoint: Endpoint, changes: list[Change],
                  admin: Login, timeout: float) -> tuple[int, str]:
        """Run chpasswd once with ``changes`` on stdin; (exit status, stdout+stderr)."""
        marker = f"PAMFLOW-END-{token_hex(8)}"
        mode, command = self._chpasswd_command(endpoint, marker)
        where = {"device": endpoint.name, "account": admin.username, "step": "chpasswd"}
        secrets = [admin.secret] + [c.new_secret for c in changes]
        deadline = time.monotonic() + timeout + PER_LINE_SECONDS * len(changes)
        try:
            chan = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"cannot open an SSH channel ({type(exc).__name__})", **where) from None
        try:
            chan.exec_command(command)
            if mode == "password":
                self._sudo_password(chan, admin, deadline, where, secrets)
            body = ("".join(f"{c.username}:{c.new_secret}\n" for c in changes)
                    + marker + "\n").encode()
            chan.sendall(body)
            chan.shutdown_write()
            checkpoint("chpasswd_sent")
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise Unreachable("chpasswd did not finish in time; the outcome is unknown",
                                  **where)
            out, err = _drain(chan)
            status = chan.recv_exit_status()
            if status == -1:
                # the channel closed without an exit status: the connection dropped while
                # chpasswd ran, and any of its lines may have been applied
                raise Unreachable("SSH connection lost while chpasswd ran; the outcome is "
                                  "unknown", **where)
        except TargetError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"SSH connection lost while running chpasswd ({type(exc).__name__});"
                              " the outcome is unknown", **where) from None
        finally:
            chan.close()
        output = (out + err).decode(errors="replace")
        if status == INPUT_CUT_STATUS and INPUT_CUT in output:
            raise InputCut("the account list reached the target incomplete; nothing was "
                           "changed", **where)
        if status != 0 and ("sudo:" in output and "line " not in output):
            # sudo itself refused: no account could be changed, nothing to isolate
            raise ChangeRefused(f"sudo refused to run chpasswd: {_tail(output, secrets)}", **where)
        return status, output

    @staticmethod
    def _sudo_password(chan: paramiko.Channel, admin: Login, deadline: float, where: dict,
                       secrets: list[str]) -> None:
        """Answer sudo's prompt with the admin's password once; wait for its verdict."""
        seen, answered = "", False
        while True:
            if SUDO_OK in seen:
                return
            if seen.count(SUDO_PROMPT) > (1 if answered else 0):
                if answered:
                    raise AuthenticationFailed("sudo refused the admin's password", **where)
                chan.sendall((admin.secret + "\n").encode())
                answered = True
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unreachable("sudo did not answer in time", **where)
            chan.settimeout(remaining)
            try:
                data = chan.recv_stderr(4096)
            except TimeoutError:
                continue
            if not data:
                out, err = _drain(chan)
                raise ChangeRefused(f"sudo ended before running chpasswd: "
                                    f"{_tail(seen + err.decode(errors='replace'), secrets)}",
                                    **where)
            seen += data.decode(errors="replace")

    # -- as the account itself: passwd
    def _apply_self(self, endpoint: Endpoint, changes: list[Change], timeout: float
                    ) -> list[ChangeResult]:
        def one(change: Change) -> ChangeResult:
            try:
                self._passwd(endpoint, change, timeout)
                return ChangeResult(change.username)
            except TargetError as exc:
                return ChangeResult(change.username, exc)

        if len(changes) == 1:
            results = [one(changes[0])]
        else:
            with ThreadPoolExecutor(min(SELF_SERVICE_PARALLEL, len(changes)),
                                    thread_name_prefix="pamflow-passwd") as pool:
                results = list(pool.map(one, changes))
        down = [r.error for r in results if isinstance(r.error, Unreachable | HostKeyChanged)]
        if results and len(down) == len(results):
            raise down[0]  # nothing could be applied anywhere
        return results

    def _passwd(self, endpoint: Endpoint, change: Change, timeout: float) -> None:
        login = Login(change.username, change.current_secret or "")
        transport = self._login(endpoint, login, timeout, "login")
        where = {"device": endpoint.name, "account": change.username, "step": "passwd"}
        secrets = [change.current_secret, change.new_secret]
        deadline = time.monotonic() + timeout + 5
        passwd = shlex.quote(check_settings(endpoint)[2])
        try:
            chan = transport.open_session(timeout=timeout)
            chan.get_pty(term="dumb", width=200, height=24)
            chan.exec_command(f"env LC_ALL=C LANG=C {passwd}")
            output, since, sent_current, sent_new = "", 0, False, 0
            while not chan.exit_status_ready() or chan.recv_ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unreachable("passwd did not finish in time; the outcome is unknown",
                                      **where)
                chan.settimeout(min(remaining, 0.5))
                try:
                    data = chan.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    break
                output += data.decode(errors="replace")
                fresh = output[since:]
                prompt = _prompt(fresh, sent_current)
                if prompt is None:
                    continue
                if prompt == "new" and sent_new >= 2:
                    # asked again after new + retype: the new password was refused
                    raise ChangeRefused(f"passwd refused the new password: {_tail(fresh, secrets)}",
                                        **where)
                if prompt == "current":
                    if sent_current:
                        raise AuthenticationFailed(
                            f"passwd did not accept the current password: {_tail(fresh, secrets)}",
                            **where)
                    chan.sendall((change.current_secret or "") + "\n")
                    sent_current = True
                else:
                    chan.sendall(change.new_secret + "\n")
                    sent_new += 1
                since = len(output)
            chan.status_event.wait(max(0.1, deadline - time.monotonic()))
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
            out, _ = _drain(chan)
            output += out.decode(errors="replace")
        except TargetError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"SSH connection lost while running passwd ({type(exc).__name__}); "
                              "the outcome is unknown", **where) from None
        finally:
            transport.close()
        if status != 0:
            text = _tail(output[since:] or output, secrets)
            if re.search(r"authentication (token manipulation )?(error|failure)", text, re.I) \
                    and not sent_new:
                raise AuthenticationFailed(f"passwd did not accept the current password: {text}",
                                           **where)
            raise ChangeRefused(f"passwd failed (exit {status}): {text or 'no message'}", **where)
        log.info("ssh: passwd changed the password of %s on %s", change.username, endpoint.name)


def check_settings(endpoint: Endpoint) -> tuple[str, str, str]:
    """The device's (sudo mode, chpasswd path, passwd command), each one of the known values.

    Raises ``InvalidSetting`` (step ``validate``) naming the first setting that is not.
    """
    checked = _settings(endpoint)
    if isinstance(checked, str):
        raise InvalidSetting(checked, device=endpoint.name, step="validate")
    return checked


def _settings(endpoint: Endpoint) -> tuple[str, str, str] | str:
    """``check_settings``'s values, or the reason they are refused."""
    settings = endpoint.settings or {}
    checked = []
    for name, default, allowed, fold in (("sudo", "nopasswd", SUDO_MODES, True),
                                         ("chpasswd", CHPASSWD_PATHS[0], CHPASSWD_PATHS, False),
                                         ("passwd", PASSWD_COMMANDS[0], PASSWD_COMMANDS, False)):
        value = settings.get(name)
        if value is None or value == "":
            checked.append(default)
            continue
        text = value.strip().lower() if fold and isinstance(value, str) else value
        if not isinstance(text, str) or text not in allowed:
            return (f"setting {name} must be one of {', '.join(allowed)}; {str(value)[:80]!r} is "
                    "not accepted")
        checked.append(text)
    return checked[0], checked[1], checked[2]


_PROMPTS = (
    ("current", re.compile(r"(current|old)[^:\n]*password[^:\n]*:\s*$", re.I)),
    ("new", re.compile(r"(retype|again|re-?enter|repeat|confirm|verify)[^:\n]*password[^:\n]*:\s*$",
                       re.I)),
    ("new", re.compile(r"new[^:\n]*password[^:\n]*:\s*$", re.I)),
    (None, re.compile(r"password[^:\n]*:\s*$", re.I)),
)


def _prompt(text: str, sent_current: bool) -> str | None:
    """Which secret a passwd/PAM prompt at the end of ``text`` asks for (None: no prompt yet)."""
    for kind, pattern in _PROMPTS:
        if pattern.search(text):
            return kind or ("new" if sent_current else "current")
    return None


def _drain(chan: paramiko.Channel) -> tuple[bytes, bytes]:
    out, err = b"", b""
    while chan.recv_ready():
        out += chan.recv(65536)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)
    return out, err


__all__ = ["CHPASSWD_PATHS", "PASSWD_COMMANDS", "SUDO_MODES", "MemoryHostKeys", "SSHTarget",
           "StoreHostKeys", "check_settings", "fingerprint"]
