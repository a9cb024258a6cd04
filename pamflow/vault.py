"""The credential vault: AES-256-GCM with a key id stored in every ciphertext.

Ciphertext format (ASCII, fits a text column)::

    pfv1.<key id>.<base64url nonce>.<base64url ciphertext+tag>

Every ciphertext is bound to where it is stored by its associated data:
:func:`credential_aad` (credential id, device id and field: ``secret``, ``pending``,
``history`` or ``candidate``) and :func:`webhook_aad` (source name and field). A
ciphertext copied onto another credential, device, field or source fails
authentication instead of opening there; moving a secret between fields (pending to
current, current to history) re-seals it (:meth:`Vault.reseal`).

Keys
----
The master key never enters Prefect. It comes from ``PAMFLOW_MASTER_KEY`` (base64 of 32
bytes; ``kid1:key1,kid2:key2`` for several keys, the first encrypts) or from the key file
(``PAMFLOW_MASTER_KEY_FILE``, default ``<data dir>/master.key``). Key ids are 1-32
characters of ``A-Z a-z 0-9 _ -``. The key id of a bare key is derived from the key
itself, so the same key always has the same id and old ciphertexts stay readable after a
new key is put first.

The key file is refused when group or others may read or write it. It is created only
by :func:`pamflow.vault_store.open_vault`, and only for a store that holds no ciphertext
and no record of a key: a store already sealed with a key never gets a fresh one. It is
written to a temporary file with mode 0600 and linked into place, so it appears whole,
and an existing key file is never replaced.

:func:`vault` is the process-wide vault, opened against the configured store (its
canary checked, see :mod:`pamflow.vault_store`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .config import data_dir
from .errors import PamflowError

PREFIX = "pfv1"
KEY_FILE_NAME = "master.key"
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
CREDENTIAL_FIELDS = ("secret", "pending", "history", "candidate")
WEBHOOK_FIELDS = ("secret", "previous")


class VaultError(PamflowError):
    """A secret could not be encrypted or decrypted. The message never holds the secret."""


class NoMasterKey(VaultError):
    """Neither ``PAMFLOW_MASTER_KEY`` nor a key file is configured on this host."""


def credential_aad(credential_id: int | None, device_id: int | None, field: str) -> bytes:
    """The associated data of a credential's ``field`` (secret, pending, history, candidate)."""
    if field not in CREDENTIAL_FIELDS:
        raise ValueError(f"unknown credential field {field!r}")
    if not isinstance(credential_id, int) or not isinstance(device_id, int):
        raise VaultError("a credential's secret is sealed once the credential and its device "
                         "have ids (write the row first)")
    return f"pamflow:credential:{credential_id}:{device_id}:{field}".encode()


def webhook_aad(source: str, field: str) -> bytes:
    """The associated data of a webhook source's ``field`` (secret, previous)."""
    if field not in WEBHOOK_FIELDS:
        raise ValueError(f"unknown webhook source field {field!r}")
    return f"pamflow:webhook:{source}:{field}".encode()


def vault_entry_aad(name: str) -> bytes:
    """The associated data of the named vault entry ``name`` (:mod:`pamflow.vault_entries`)."""
    if not isinstance(name, str) or not name:
        raise VaultError("a vault entry is sealed under its name")
    return f"pamflow:vault-entry:{name}".encode()


CANARY_AAD = b"pamflow:vault:canary"


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id_for(key: bytes) -> str:
    """A short, stable id for a key (not reversible to the key)."""
    return hashlib.sha256(b"pamflow-key-id:" + key).hexdigest()[:12]


def check_key_id(kid: str, where: str) -> str:
    """``kid`` if it is a valid key id; else VaultError naming ``where`` it came from."""
    if not isinstance(kid, str) or not KEY_ID_RE.fullmatch(kid):
        shown = repr(kid[:40]) if isinstance(kid, str) else type(kid).__name__
        raise VaultError(f"{where}: invalid key id {shown}: use 1-32 characters of "
                         "A-Z, a-z, 0-9, _ and -")
    return kid


def _parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        try:
            key = _b64d(text.strip())
        except ValueError:
            raise VaultError("master key must be 32 bytes, base64-encoded") from None
    if len(key) != 32:
        raise VaultError("master key must be 32 bytes, base64-encoded")
    return key


def key_file_path() -> Path:
    """``PAMFLOW_MASTER_KEY_FILE`` or ``<data dir>/master.key``."""
    return Path(os.environ.get("PAMFLOW_MASTER_KEY_FILE") or data_dir() / KEY_FILE_NAME)


@dataclass(frozen=True)
class Keyring:
    """The keys the vault knows; ``active`` encrypts, all of them decrypt."""

    active: str
    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        for kid in self.keys:
            check_key_id(kid, "keyring")
        if self.active not in self.keys:
            raise VaultError(f"the active key id {self.active!r} is not among the keys")

    def __repr__(self) -> str:  # never print key material
        return f"Keyring(active={self.active!r}, keys={sorted(self.keys)!r})"

    @classmethod
    def from_env_value(cls, value: str) -> Keyring:
        keys: dict[str, bytes] = {}
        active = None
        for part in (p for p in value.split(",") if p.strip()):
            if ":" in part:
                kid, raw = part.split(":", 1)
                kid = check_key_id(kid.strip(), "PAMFLOW_MASTER_KEY")
                key = _parse_key(raw)
            else:
                key = _parse_key(part)
                kid = key_id_for(key)
            if kid in keys and keys[kid] != key:
                raise VaultError(f"PAMFLOW_MASTER_KEY: key id {kid} is given twice with different keys")
            keys[kid] = key
            active = active or kid
        if not active:
            raise VaultError("PAMFLOW_MASTER_KEY is empty")
        return cls(active=active, keys=keys)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        """Read the key file; refused when group or others have any permission on it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise VaultError(f"cannot read master key file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise VaultError(f"master key file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise VaultError(
                    f"master key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or "
                    f"others may use it; restrict it (chmod 600 {path}) and start again")
            raw = fh.read(64 * 1024)
        try:
            data = json.loads(raw)
            keys = {check_key_id(kid, f"master key file {path}"): _parse_key(k)
                    for kid, k in data["keys"].items()}
            active = check_key_id(data["active"], f"master key file {path}")
            return cls(active=active, keys=keys)
        except VaultError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VaultError(f"cannot read master key file {path}: {exc.__class__.__name__}") from None

    @classmethod
    def create_file(cls, path: Path) -> Keyring:
        """Write a new key file atomically (0600); FileExistsError if one exists already."""
        key = secrets.token_bytes(32)
        kid = key_id_for(key)
        payload = json.dumps({"active": kid, "keys": {kid: base64.b64encode(key).decode()}})
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)  # never replaces an existing key file
        finally:
            tmp.unlink(missing_ok=True)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return cls(active=kid, keys={kid: key})

    @classmethod
    def load(cls, create: bool = False) -> Keyring:
        """``PAMFLOW_MASTER_KEY``, else the key file; with ``create``, a new key file when
        there is none. Without it, a missing key raises :class:`NoMasterKey`."""
        value = os.environ.get("PAMFLOW_MASTER_KEY")
        if value:
            return cls.from_env_value(value)
        path = key_file_path()
        if path.exists() or path.is_symlink():
            return cls.from_file(path)
        if not create:
            raise NoMasterKey(f"no master key on this host: PAMFLOW_MASTER_KEY is not set and "
                              f"there is no key file {path}")
        try:
            return cls.create_file(path)
        except FileExistsError:  # another process created it first
            return cls.from_file(path)


class Vault:
    """Encrypts and decrypts secrets; ``aad`` (see :func:`credential_aad`) is bound to each."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.keyring = keyring or Keyring.load()
        self._ciphers = {kid: AESGCM(key) for kid, key in self.keyring.keys.items()}

    def __repr__(self) -> str:
        return f"Vault({self.keyring!r})"

    @property
    def active_key_id(self) -> str:
        return self.keyring.active

    def encrypt(self, secret: str, aad: bytes) -> str:
        if not isinstance(aad, bytes) or not aad:
            raise TypeError("encrypt needs the associated data (credential_aad / webhook_aad)")
        nonce = secrets.token_bytes(12)
        sealed = self._ciphers[self.keyring.active].encrypt(nonce, secret.encode("utf-8"), aad)
        return f"{PREFIX}.{self.keyring.active}.{_b64e(nonce)}.{_b64e(sealed)}"

    def decrypt(self, token: str, aad: bytes) -> str:
        if not isinstance(aad, bytes) or not aad:
            raise TypeError("decrypt needs the associated data (credential_aad / webhook_aad)")
        try:
            prefix, kid, nonce, sealed = token.split(".")
        except (AttributeError, ValueError):
            raise VaultError("not a pamflow ciphertext") from None
        if prefix != PREFIX:
            raise VaultError("not a pamflow ciphertext (unknown format)")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            shown = kid if KEY_ID_RE.fullmatch(kid) else "(invalid)"
            raise VaultError(f"ciphertext was sealed with key id {shown}, which this vault does not hold")
        try:
            return cipher.decrypt(_b64d(nonce), _b64d(sealed), aad).decode("utf-8")
        except (InvalidTag, ValueError):
            raise VaultError(
                f"ciphertext under key id {kid} failed authentication: tampered, copied from "
                "another row, or a wrong key"
            ) from None

    def reseal(self, token: str, old_aad: bytes, new_aad: bytes) -> str:
        """The same secret, sealed under the active key for ``new_aad``."""
        return self.encrypt(self.decrypt(token, old_aad), new_aad)

    @staticmethod
    def key_id_of(token: str) -> str:
        parts = token.split(".") if isinstance(token, str) else []
        return parts[1] if len(parts) == 4 and parts[0] == PREFIX else "(not a pamflow ciphertext)"

    def needs_rekey(self, token: str) -> bool:
        return self.key_id_of(token) != self.keyring.active


_default: Vault | None = None
_default_lock = threading.Lock()


def vault() -> Vault:
    """The process-wide vault, opened against the configured store.

    Opening it checks the store's key canary (a store sealed with another key is refused
    with a clear error) and creates the key file only for a store without secrets; see
    :func:`pamflow.vault_store.open_vault`.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                from .db import store
                from .vault_store import open_vault

                _default = open_vault(store())
    return _default


def reset_vault() -> None:
    global _default
    _default = None
