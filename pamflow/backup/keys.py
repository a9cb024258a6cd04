"""Backup keys: X25519 recipients, separate from the vault's master key.

A backup is sealed to one or more *recipients* (X25519 public keys). The host that makes
backups holds only the public keys, so it can make backups but not read them; reading one
(``restore``, ``verify``) needs the private key, which is kept off that host — whole, or
split between two custodians.

Text formats (one line each)::

    pfbk1-pub:<base64url 32 bytes>          a recipient (public key)
    pfbk1-key:<base64url 32 bytes>          a private key
    pfbk1-share:<key id>:<n>of2:<base64url 32 bytes>:<check>   one custodian's share

Split: **XOR 2-of-2** — share 1 is 32 random bytes, share 2 is the private key XOR share 1;
either share alone is uniformly random and says nothing about the key, both together give
it back. Each share carries the key id (so the two shares of one key are recognised, and the
rebuilt key is checked against it) and a check value that catches a mistyped share.

The key id is derived from the public key (``sha256("pamflow-backup-key:" + public)``,
12 hex digits); it is never the vault's key id, and a backup key is refused if its bytes
equal a master key of this host's vault.

Recipients are configured with ``PAMFLOW_BACKUP_RECIPIENTS`` (public keys separated by
commas) or the file ``<data dir>/backup-recipients.pub`` (one per line; ``#`` comments).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..config import data_dir
from .errors import BackupKeyError

PUB_PREFIX = "pfbk1-pub:"
KEY_PREFIX = "pfbk1-key:"
SHARE_PREFIX = "pfbk1-share:"
RECIPIENTS_FILE = "backup-recipients.pub"
MAX_KEY_FILE = 16 * 1024
_SHARE_RE = re.compile(r"^pfbk1-share:([0-9a-f]{12}):([12])of2:([A-Za-z0-9_-]{43}):([0-9a-f]{8})$")
_WRAP_INFO = b"pamflow-backup-v1:dek-wrap"


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str, what: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BackupKeyError(f"{what}: not valid base64url") from None
    if len(raw) != 32:
        raise BackupKeyError(f"{what}: must be 32 bytes")
    return raw


def key_id_of(public: bytes) -> str:
    """The backup key id of a public key (12 hex digits)."""
    return hashlib.sha256(b"pamflow-backup-key:" + public).hexdigest()[:12]


def _share_check(kid: str, index: int, share: bytes) -> str:
    return hashlib.sha256(f"pfbk1-share:{kid}:{index}:".encode() + share).hexdigest()[:8]


@dataclass(frozen=True)
class Recipient:
    """A public key backups are sealed to."""

    public: bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    def text(self) -> str:
        return PUB_PREFIX + _b64e(self.public)

    @classmethod
    def parse(cls, text: str) -> Recipient:
        value = (text or "").strip().split()[0] if (text or "").strip() else ""
        if not value.startswith(PUB_PREFIX):
            raise BackupKeyError(f"not a backup public key (expected {PUB_PREFIX}...)")
        return cls(_b64d(value[len(PUB_PREFIX):], "backup public key"))

    def wrap(self, dek: bytes, context: bytes) -> dict[str, str]:
        """``dek`` sealed to this recipient: an ephemeral X25519 key, HKDF, AES-256-GCM."""
        eph = X25519PrivateKey.generate()
        epk = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        kek = _kek(eph.exchange(X25519PublicKey.from_public_bytes(self.public)), epk, self.public)
        wrapped = AESGCM(kek).encrypt(b"\0" * 12, dek, context)
        return {"kid": self.key_id, "epk": _b64e(epk), "wrapped": _b64e(wrapped)}


def _kek(shared: bytes, epk: bytes, public: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + public,
                info=_WRAP_INFO).derive(shared)


class BackupKey:
    """A backup private key (reads backups sealed to its public key)."""

    def __init__(self, private: bytes) -> None:
        if len(private) != 32:
            raise BackupKeyError("a backup private key is 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(private)
        self._raw = private
        self.recipient = Recipient(self._private.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw))

    def __repr__(self) -> str:  # never print key material
        return f"BackupKey(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        return self.recipient.key_id

    @classmethod
    def generate(cls) -> BackupKey:
        return cls(secrets.token_bytes(32))

    def text(self) -> str:
        return KEY_PREFIX + _b64e(self._raw)

    @classmethod
    def parse(cls, text: str) -> BackupKey:
        value = (text or "").strip()
        if not value.startswith(KEY_PREFIX):
            raise BackupKeyError(f"not a backup private key (expected {KEY_PREFIX}...)")
        return cls(_b64d(value[len(KEY_PREFIX):], "backup private key"))

    def split(self) -> tuple[str, str]:
        """Two custodian shares (XOR 2-of-2): both are needed, either alone reveals nothing."""
        one = secrets.token_bytes(32)
        two = bytes(a ^ b for a, b in zip(self._raw, one, strict=True))
        kid = self.key_id
        return tuple(f"{SHARE_PREFIX}{kid}:{i}of2:{_b64e(s)}:{_share_check(kid, i, s)}"
                     for i, s in ((1, one), (2, two)))  # type: ignore[return-value]

    @classmethod
    def combine(cls, first: str, second: str) -> BackupKey:
        """The key rebuilt from its two shares (in any order); refused when they do not fit."""
        parsed = {}
        for text in (first, second):
            m = _SHARE_RE.match((text or "").strip())
            if not m:
                raise BackupKeyError("not a backup key share (expected pfbk1-share:<key id>:<n>of2:"
                                     "<data>:<check>)")
            kid, index, data, check = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            raw = _b64d(data, f"share {index} of key {kid}")
            if _share_check(kid, index, raw) != check:
                raise BackupKeyError(f"share {index} of key {kid} fails its check value: mistyped "
                                     "or altered")
            if index in parsed:
                raise BackupKeyError(f"both shares given are share {index} of key {kid}; give "
                                     "share 1 and share 2")
            parsed[index] = (kid, raw)
        if parsed[1][0] != parsed[2][0]:
            raise BackupKeyError(f"the shares belong to different keys ({parsed[1][0]} and "
                                 f"{parsed[2][0]})")
        key = cls(bytes(a ^ b for a, b in zip(parsed[1][1], parsed[2][1], strict=True)))
        if key.key_id != parsed[1][0]:
            raise BackupKeyError(f"the shares of key {parsed[1][0]} do not rebuild it")
        return key

    def unwrap(self, entry: dict, context: bytes) -> bytes | None:
        """The data key of a header's recipient entry, or None when it does not open."""
        from cryptography.exceptions import InvalidTag

        try:
            epk = _b64d(str(entry["epk"]), "ephemeral key")
            wrapped = base64.urlsafe_b64decode(str(entry["wrapped"]) + "==")
            kek = _kek(self._private.exchange(X25519PublicKey.from_public_bytes(epk)), epk,
                       self.recipient.public)
            return AESGCM(kek).decrypt(b"\0" * 12, wrapped, context)
        except (InvalidTag, KeyError, ValueError, BackupKeyError, binascii.Error):
            return None

    def check_not_master_key(self) -> None:
        """Refuse a backup key that is one of this host's vault master keys."""
        from ..vault import Keyring, NoMasterKey, VaultError

        try:
            ring = Keyring.load()
        except (NoMasterKey, VaultError):
            return
        if any(secrets.compare_digest(k, self._raw) for k in ring.keys.values()):
            raise BackupKeyError("the backup key must not be the vault's master key")


def read_key_file(path: Path, what: str) -> str:
    """A key or share file's text; refused when group or others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BackupKeyError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_mode & 0o077:
            raise BackupKeyError(f"{what} {path} may be read by group or others: chmod 600 it")
        raw = fh.read(MAX_KEY_FILE + 1)
    if len(raw) > MAX_KEY_FILE:
        raise BackupKeyError(f"{what} {path} is too large to be a key")
    try:
        lines = [ln.strip() for ln in raw.decode("ascii").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except UnicodeDecodeError:
        raise BackupKeyError(f"{what} {path} is not a text key file") from None
    if len(lines) != 1:
        raise BackupKeyError(f"{what} {path} must hold exactly one key line")
    return lines[0]


def load_key(key_file: Path | None = None, shares: list[Path] | None = None) -> BackupKey:
    """The private key from a key file, or rebuilt from two custodian share files."""
    if key_file is not None and shares:
        raise BackupKeyError("give either a key file or two share files, not both")
    if key_file is not None:
        key = BackupKey.parse(read_key_file(key_file, "backup key file"))
    elif shares and len(shares) == 2:
        key = BackupKey.combine(read_key_file(shares[0], "share file"),
                                read_key_file(shares[1], "share file"))
    else:
        raise BackupKeyError("reading a backup needs its private key: a key file, or both "
                             "custodians' share files")
    key.check_not_master_key()
    return key


def recipients_path() -> Path:
    return data_dir() / RECIPIENTS_FILE


def configured_recipients() -> list[Recipient]:
    """The public keys new backups are sealed to; BackupKeyError when none is configured."""
    value = os.environ.get("PAMFLOW_BACKUP_RECIPIENTS")
    if value:
        items = [v for v in value.split(",") if v.strip()]
        where = "PAMFLOW_BACKUP_RECIPIENTS"
    else:
        path = recipients_path()
        if not path.exists():
            raise BackupKeyError(
                "no backup key configured: run `pamflow backup keygen --out DIR` (keeps the "
                f"private key off this host) or set PAMFLOW_BACKUP_RECIPIENTS; looked for {path}")
        items = [ln for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        where = str(path)
    out: list[Recipient] = []
    for item in items:
        try:
            rec = Recipient.parse(item)
        except BackupKeyError as exc:
            raise BackupKeyError(f"{where}: {exc}") from None
        if rec.key_id not in {r.key_id for r in out}:
            out.append(rec)
    if not out:
        raise BackupKeyError(f"{where} holds no backup public key")
    return out


def install_recipient(recipient: Recipient) -> Path:
    """Add ``recipient`` to the recipients file (created 0644: public keys only)."""
    path = recipients_path()
    existing = path.read_text() if path.exists() else ""
    if recipient.text() not in existing:
        with path.open("a") as fh:
            fh.write(f"{recipient.text()} key-id={recipient.key_id}\n")
    return path


def write_secret_file(path: Path, text: str) -> None:
    """Write a key or share file with mode 0600; never replaces an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


__all__ = ["BackupKey", "Recipient", "configured_recipients", "install_recipient", "key_id_of",
           "load_key", "read_key_file", "recipients_path", "write_secret_file"]
