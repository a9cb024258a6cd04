"""Pinned SSH host keys: a device's key recorded before the first connection.

Without a recorded key the SSH target trusts the key a device offers on first contact and
records it; from then on a different key stops every connection before any password is
sent. Pinning records the key an operator got by a trusted route (the console, the image
build, a configuration-management inventory) so that the very first connection is checked
too. A pinned key replaces whatever was recorded for that device and port, and the pin is
written to the audit log.

A key is given as an OpenSSH public key line (``ssh-ed25519 AAAA... comment``, as in a
``.pub`` file) or a ``known_hosts`` line (``host1,[host2]:2222 ssh-ed25519 AAAA...``). Host
names in a ``known_hosts`` line are not checked against the device — the operator says which
device the key belongs to — but a ``[host]:port`` entry gives the port. ``@cert-authority``
and ``@revoked`` lines, certificates and unknown key types are refused, as is a key whose
bytes paramiko does not read back exactly (bad base64, a wrong length, trailing bytes, a
type that does not match its data).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from . import audit
from .errors import PamflowError
from .models import AuditLog, Device, HostKey, row_id

_BRACKETED = re.compile(r"^\[([^\]]+)\]:(\d+)$")
MAX_LINE = 16 * 1024


class HostKeyError(PamflowError, ValueError):
    """A host key line, port or device that cannot be pinned; the message says why."""


@dataclass(frozen=True)
class ParsedHostKey:
    """A validated public host key, and the port its ``known_hosts`` line named (if any)."""

    key_type: str
    key_base64: str
    fingerprint: str
    port: int | None = None


def _fingerprint(blob: bytes) -> str:
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_host_key(line: str) -> ParsedHostKey:
    """Validate an OpenSSH public key or ``known_hosts`` line; raises ``HostKeyError``."""
    import paramiko

    if not isinstance(line, str) or not line.strip():
        raise HostKeyError("no host key given")
    if len(line) > MAX_LINE or "\n" in line.strip() or "\r" in line.strip():
        raise HostKeyError("a host key is one line of at most 16 KiB")
    tokens = line.split()
    if tokens[0].startswith("@"):
        raise HostKeyError(f"{tokens[0]} lines are not host keys")
    key_names = {name for cls in paramiko.key_classes for name in cls.identifiers()}
    port = None
    if len(tokens) >= 3 and tokens[0] not in key_names and (
            tokens[1] in key_names or tokens[2].startswith("AAAA")):
        hosts, tokens = tokens[0], tokens[1:]
        ports = {int(m.group(2)) for h in hosts.split(",") if (m := _BRACKETED.match(h))}
        if len(ports) > 1:
            raise HostKeyError(f"the known_hosts line names several ports ({hosts}); give the "
                               "port")
        port = ports.pop() if ports else None
        if port is not None and not 0 < port < 65536:
            raise HostKeyError(f"{port} is not a port number")
    if len(tokens) < 2:
        raise HostKeyError("expected a key type and its base64 data, e.g. "
                           "'ssh-ed25519 AAAAC3Nza...'")
    key_type, data = tokens[0], tokens[1]
    if "-cert-" in key_type:
        raise HostKeyError(f"{key_type} is a certificate, not a host key")
    if key_type not in key_names or key_type.startswith("rsa-sha2-"):
        raise HostKeyError(f"unknown host key type {key_type[:60]!r} (known: ssh-ed25519, "
                           "ecdsa-sha2-nistp256/384/521, ssh-rsa)")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HostKeyError(f"the {key_type} key is not valid base64") from None
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
        readable = key.get_name() == key_type and key.asbytes() == blob
    except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds for bad key data
        raise HostKeyError(f"the {key_type} key data is not a valid {key_type} key "
                           f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not readable:
        raise HostKeyError(f"the {key_type} key data is not a valid {key_type} key (wrong "
                           "length, extra bytes or another key type)")
    return ParsedHostKey(key_type, key.get_base64(), _fingerprint(blob), port)


class _PortsAndSettings(Protocol):
    ports: list[int]
    settings: dict


def ssh_port(device: _PortsAndSettings) -> int:
    """The port the SSH target connects to for ``device``, as rotation chooses it: the
    ``port`` setting, else 22 when the device lists it, else its first port, else 22."""
    settings = device.settings or {}
    ports = list(device.ports or [])
    return int(settings.get("port") or (22 if 22 in ports else ports[0] if ports else 22))


def protocol_of(platform: str | None, change_protocol: str | None) -> str:
    """The change protocol a device with these fields uses (``ssh`` for unknown platforms)."""
    from .targets import PLATFORM_PROTOCOLS

    return (change_protocol or PLATFORM_PROTOCOLS.get((platform or "").lower(), "ssh")).lower()


def _check_device(device: Device) -> None:
    protocol = protocol_of(device.platform, device.change_protocol)
    if protocol != "ssh":
        raise HostKeyError(f"device {device.name} is changed over {protocol}, not SSH: it has no "
                           "SSH host key to pin")


def pin(db: Session, device: Device, key: str | ParsedHostKey, *, port: int | None = None,
        actor: str = "system") -> tuple[HostKey, list[str]]:
    """Pin ``key`` for ``device`` in ``db``'s transaction (the caller commits).

    The port is ``port``, else the one the ``known_hosts`` line names, else the device's SSH
    port; a ``port`` that contradicts the line is refused. Every key recorded for that
    device and port is replaced. Returns the new row and the fingerprints it replaced.
    """
    parsed = key if isinstance(key, ParsedHostKey) else parse_host_key(key)
    _check_device(device)
    if port is not None and parsed.port is not None and port != parsed.port:
        raise HostKeyError(f"the known_hosts line is for port {parsed.port}, not {port}")
    port = port if port is not None else parsed.port if parsed.port is not None else ssh_port(device)
    if not 0 < port < 65536:
        raise HostKeyError(f"{port} is not a port number")
    device_id = row_id(device)
    old = list(db.exec(select(HostKey).where(col(HostKey.device_id) == device_id,
                                             col(HostKey.port) == port)))
    replaced = [f"{row.key_type} {row.fingerprint}" for row in old
                if (row.key_type, row.key_base64) != (parsed.key_type, parsed.key_base64)]
    for row in old:
        db.delete(row)
    db.flush()
    row = HostKey(device_id=device_id, port=port, key_type=parsed.key_type,
                  key_base64=parsed.key_base64, fingerprint=parsed.fingerprint)
    db.add(row)
    audit.record(db, actor, "pin_host_key", "device", device_id,
                 {"port": port, "key_type": parsed.key_type, "fingerprint": parsed.fingerprint,
                  "replaced": replaced})
    return row, replaced


def pin_host_key(engine: Engine, device_id: int, port: int | None, line: str, *,
                 actor: str = "system") -> HostKey:
    """Pin the key in ``line`` for a device's port (None: from the line or the device) and
    commit; raises ``HostKeyError`` with the reason when it cannot."""
    parsed = parse_host_key(line)
    with Session(engine, expire_on_commit=False) as db:
        device = db.get(Device, device_id)
        if device is None:
            raise HostKeyError(f"no device with id {device_id}")
        row, _replaced = pin(db, device, parsed, port=port, actor=actor)
        db.commit()
        db.refresh(row)
        return row


@dataclass(frozen=True)
class RecordedHostKey:
    """A host key recorded for a device, and who pinned it (None: first seen on contact)."""

    key: HostKey
    pinned_by: str | None


def recorded_host_keys(engine: Engine, device_id: int) -> list[RecordedHostKey]:
    """The host keys recorded for a device, by port and type, each with its origin."""
    with Session(engine, expire_on_commit=False) as db:
        keys = list(db.exec(select(HostKey).where(col(HostKey.device_id) == device_id)
                            .order_by(col(HostKey.port), col(HostKey.key_type))))
        pins = db.exec(select(AuditLog).where(col(AuditLog.action) == "pin_host_key",
                                              col(AuditLog.entity) == "device",
                                              col(AuditLog.entity_id) == str(device_id))
                       .order_by(col(AuditLog.id))).all()
    by = {(p.detail.get("port"), p.detail.get("fingerprint")): p.actor for p in pins}
    return [RecordedHostKey(k, by.get((k.port, k.fingerprint))) for k in keys]


__all__ = ["HostKeyError", "ParsedHostKey", "RecordedHostKey", "parse_host_key", "pin", "pin_host_key",
           "protocol_of", "recorded_host_keys", "ssh_port"]
