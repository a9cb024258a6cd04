"""The credential vault: AES-256-GCM with a key id stored in every ciphertext.

Ciphertext format (ASCII, fits a text column)::

    pfv1.<key id>.<base64url nonce>.<base64url ciphertext+tag>

The master key never enters Prefect. It comes from ``PAMFLOW_MASTER_KEY`` (base64 of 32
bytes; ``kid1:key1,kid2:key2`` for several keys, the first encrypts) or from the key file
``<data dir>/master.key``, created on first run with mode 0600. The key id of a bare key
is derived from the key itself, so the same key always has the same id and old
ciphertexts stay readable after a new key is put first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .config import data_dir

PREFIX = "pfv1"
KEY_FILE_NAME = "master.key"


class VaultError(Exception):
    """A secret could not be encrypted or decrypted. The message never holds the secret."""


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id_for(key: bytes) -> str:
    """A short, stable id for a key (not reversible to the key)."""
    return hashlib.sha256(b"pamflow-key-id:" + key).hexdigest()[:12]


def _parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        key = _b64d(text.strip())
    if len(key) != 32:
        raise VaultError("master key must be 32 bytes, base64-encoded")
    return key


@dataclass(frozen=True)
class Keyring:
    """The keys the vault knows; ``active`` encrypts, all of them decrypt."""

    active: str
    keys: dict[str, bytes]

    @classmethod
    def from_env_value(cls, value: str) -> Keyring:
        keys: dict[str, bytes] = {}
        active = None
        for part in (p for p in value.split(",") if p.strip()):
            if ":" in part:
                kid, raw = part.split(":", 1)
                kid = kid.strip()
                key = _parse_key(raw)
            else:
                key = _parse_key(part)
                kid = key_id_for(key)
            keys[kid] = key
            active = active or kid
        if not active:
            raise VaultError("PAMFLOW_MASTER_KEY is empty")
        return cls(active=active, keys=keys)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        try:
            data = json.loads(path.read_text())
            keys = {kid: _parse_key(k) for kid, k in data["keys"].items()}
            return cls(active=data["active"], keys=keys)
        except (OSError, ValueError, KeyError) as exc:
            raise VaultError(f"cannot read master key file {path}: {exc.__class__.__name__}") from None

    @classmethod
    def create_file(cls, path: Path) -> Keyring:
        key = secrets.token_bytes(32)
        kid = key_id_for(key)
        payload = json.dumps({"active": kid, "keys": {kid: base64.b64encode(key).decode()}})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        return cls(active=kid, keys={kid: key})

    @classmethod
    def load(cls) -> Keyring:
        """``PAMFLOW_MASTER_KEY``, else the key file (created with 0600 if missing)."""
        value = os.environ.get("PAMFLOW_MASTER_KEY")
        if value:
            return cls.from_env_value(value)
        path = Path(os.environ.get("PAMFLOW_MASTER_KEY_FILE") or data_dir() / KEY_FILE_NAME)
        if path.exists():
            return cls.from_file(path)
        try:
            return cls.create_file(path)
        except FileExistsError:  # another process created it first
            return cls.from_file(path)


class Vault:
    """Encrypts and decrypts secrets. ``purpose`` is bound as associated data."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.keyring = keyring or Keyring.load()
        self._ciphers = {kid: AESGCM(key) for kid, key in self.keyring.keys.items()}

    @property
    def active_key_id(self) -> str:
        return self.keyring.active

    def encrypt(self, secret: str, purpose: str = "credential") -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._ciphers[self.keyring.active].encrypt(
            nonce, secret.encode("utf-8"), purpose.encode()
        )
        return f"{PREFIX}.{self.keyring.active}.{_b64e(nonce)}.{_b64e(sealed)}"

    def decrypt(self, token: str, purpose: str = "credential") -> str:
        try:
            prefix, kid, nonce, sealed = token.split(".")
        except (AttributeError, ValueError):
            raise VaultError("not a pamflow ciphertext") from None
        if prefix != PREFIX:
            raise VaultError(f"unknown ciphertext format {prefix!r}")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise VaultError(f"ciphertext was sealed with key id {kid}, which this vault does not hold")
        try:
            return cipher.decrypt(_b64d(nonce), _b64d(sealed), purpose.encode()).decode("utf-8")
        except (InvalidTag, ValueError):
            raise VaultError(
                f"ciphertext under key id {kid} failed authentication: tampered, or a wrong key"
            ) from None

    @staticmethod
    def key_id_of(token: str) -> str:
        return token.split(".")[1]

    def needs_rekey(self, token: str) -> bool:
        return self.key_id_of(token) != self.keyring.active


_default: Vault | None = None


def vault() -> Vault:
    """The process-wide vault built from the configured master key."""
    global _default
    if _default is None:
        _default = Vault()
    return _default


def reset_vault() -> None:
    global _default
    _default = None
