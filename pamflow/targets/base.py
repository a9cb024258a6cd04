"""What every password target (SSH, WinRM, LDAP) offers the rotation protocol.

A target knows how to *apply* a new secret to an account and how to *verify* a secret by
logging in with it. It never stores anything: the write-ahead protocol in
``pamflow.credentials`` decides what is pending, current or unverified.

Errors carry the device, account and step, never a secret. The difference between
``AuthenticationFailed`` (the target said no: the secret is wrong) and ``Unreachable``
(no answer: nothing is known) is what lets reconciliation tell a wrong password from a
network problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..errors import PamflowError


class TargetError(PamflowError):
    """A target operation failed. ``retryable`` says whether trying later may succeed."""

    retryable = False

    def __init__(self, message: str, *, device: str = "", account: str = "", step: str = ""):
        self.device, self.account, self.step = device, account, step
        where = ", ".join(x for x in (f"device {device}" if device else "",
                                      f"account {account}" if account else "",
                                      f"step {step}" if step else "") if x)
        super().__init__(f"{message} ({where})" if where else message)


class AuthenticationFailed(TargetError):
    """The target refused the secret: a definite 'wrong password'."""


class Unreachable(TargetError):
    """Connection refused, timed out or dropped: the outcome is unknown."""

    retryable = True


class HostKeyChanged(TargetError):
    """The SSH host key differs from the one recorded on first contact."""


class ChangeRefused(TargetError):
    """The target answered but did not accept the change (policy, permissions...)."""


class InvalidSetting(ChangeRefused):
    """A device setting is not one the target accepts; refused before connecting."""


class TLSFailed(Unreachable):
    """TLS with the target could not be set up (certificate not trusted or not for this host,
    no TLS on that port): nothing was sent, and retrying will not help."""

    retryable = False


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a device; no secrets."""

    device_id: int
    name: str
    address: str
    port: int
    settings: dict = field(default_factory=dict)  # protocol options (transport, base dn...)


@dataclass(frozen=True)
class Login:
    """An account and its secret, held only in memory for the duration of one step."""

    username: str
    secret: str = field(repr=False)

    def __repr__(self) -> str:  # never print the secret
        return f"Login(username={self.username!r})"


@dataclass(frozen=True)
class Change:
    """One account's new secret; ``current`` is the recorded one (for self-service change)."""

    username: str
    new_secret: str = field(repr=False)
    current_secret: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Change(username={self.username!r})"


@dataclass
class ChangeResult:
    username: str
    error: TargetError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class PasswordTarget(Protocol):
    """Implemented by ``pamflow.targets.ssh``, ``.winrm`` and ``.ldap``."""

    protocol: str  # "ssh" | "winrm" | "ldap"

    def apply(self, endpoint: Endpoint, changes: list[Change], admin: Login | None,
              timeout: float) -> list[ChangeResult]:
        """Set each account's new secret on the target.

        With ``admin`` the change goes through the admin account (sudo chpasswd, net user,
        an LDAP admin bind); without it each account changes its own secret with
        ``current_secret``. Several changes on one device may share one connection.
        Raises ``Unreachable``/``HostKeyChanged`` when nothing could be applied; per-account
        failures are in the results.
        """
        ...

    def verify(self, endpoint: Endpoint, login: Login, timeout: float) -> bool:
        """True when ``login`` authenticates, False when the target refuses it.

        Raises ``Unreachable`` (or ``HostKeyChanged``) when it cannot tell.
        """
        ...
