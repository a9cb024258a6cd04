"""Password targets by protocol: ``get_target("ssh")`` imports only the module it needs.

The protocol of a device comes from ``Device.change_protocol`` or, when unset, from its
platform (linux/unix -> ssh, windows -> winrm, ldap/ad -> ldap): see ``protocol_for``.
Targets keep no per-call state, so one instance per protocol and store is shared by every
thread of an executor.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from .base import PasswordTarget, TargetError

# protocol -> (module, class)
_MODULES: dict[str, tuple[str, str]] = {
    "ssh": ("pamflow.targets.ssh", "SSHTarget"),
    "winrm": ("pamflow.targets.winrm", "WinRMTarget"),
    "ldap": ("pamflow.targets.ldap", "LDAPTarget"),
}

PLATFORM_PROTOCOLS: dict[str, str] = {
    "linux": "ssh",
    "unix": "ssh",
    "aix": "ssh",
    "solaris": "ssh",
    "bsd": "ssh",
    "windows": "winrm",
    "ldap": "ldap",
    "ad": "ldap",
    "activedirectory": "ldap",
}

DEFAULT_PORTS = {"ssh": 22, "winrm": 5986, "ldap": 636}  # WinRM over HTTPS, LDAPS

_factories: dict[str, Callable[[Any], PasswordTarget]] = {}
_instances: dict[tuple[str, int], PasswordTarget] = {}
_lock = threading.Lock()


class UnknownProtocol(TargetError):
    """No password target for a device's protocol or platform."""


def protocol_for(device: Any) -> str:
    """The change protocol of ``device`` (a ``Device`` or anything with the same fields)."""
    proto = (getattr(device, "change_protocol", None) or "").strip().lower()
    if proto:
        return proto
    platform = (getattr(device, "platform", None) or "").strip().lower()
    proto = PLATFORM_PROTOCOLS.get(platform)
    if proto is None:
        raise UnknownProtocol(f"no password target for platform {platform or '(none)'!r}",
                              device=getattr(device, "name", ""), step="select target")
    return proto


def register_target(protocol: str, factory: Callable[[Any], PasswordTarget]) -> None:
    """Install a target factory ``factory(engine)`` for ``protocol`` (tools, tests)."""
    with _lock:
        _factories[protocol] = factory
        for key in [k for k in _instances if k[0] == protocol]:
            del _instances[key]


def _build(protocol: str, engine: Any) -> PasswordTarget:
    factory = _factories.get(protocol)
    if factory is not None:
        return factory(engine)
    try:
        module_name, class_name = _MODULES[protocol]
    except KeyError:
        raise UnknownProtocol(f"no password target for protocol {protocol!r}",
                              step="select target") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    params = inspect.signature(cls).parameters
    if "engine" in params:
        return cls(engine)
    return cls()


def get_target(protocol: str, engine: Any = None) -> PasswordTarget:
    """The shared password target for ``protocol`` (``ssh`` | ``winrm`` | ``ldap``).

    ``engine`` is the store a target may need (the SSH target records host keys there).
    """
    protocol = protocol.strip().lower()
    key = (protocol, id(engine))
    with _lock:
        target = _instances.get(key)
        if target is None:
            target = _instances[key] = _build(protocol, engine)
        return target


def reset_targets() -> None:
    """Forget shared instances (tests switch stores between cases)."""
    with _lock:
        _instances.clear()


__all__ = ["DEFAULT_PORTS", "PLATFORM_PROTOCOLS", "UnknownProtocol", "get_target", "protocol_for",
           "register_target", "reset_targets"]
