"""Tamper-proof log sealing (tamperprooflogjob): the audit hash chain sealed in signed blocks.

A seal covers the audit rows ``after_id < id <= last_id`` (the block after the previous
seal): their number and the hash of the last one (which, through the chain, commits to
every row before it), the time, and the digest of the previous seal's message, signed with
an Ed25519 key. The private key is kept encrypted by pamflow's vault (table
``audit_seal_key``; its master key is never in the store), so whoever can write the store
but does not hold the master key cannot re-seal a rewritten chain.

Seals are numbered from 1 without gaps and chained by ``prev_digest``: a removed or
edited seal is seen. Sealing takes the audit log's writer lock, so no audit row is being
written (or can commit with a lower id) while a block is sealed, and it refuses to seal a
chain that does not hold.

:func:`verify_log` walks the chain from its anchor (the head of the last block moved to
the archive by the data archiver, or the genesis) and names the first altered, removed or
inserted row and the seal it breaks; seals are checked for number, chain and signature.
:func:`verify_archive` checks an archived block against its seal.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from .audit import GENESIS, _chain_head, _row_digest, record
from .errors import PamflowError
from .models import AuditLog, AuditSeal, AuditSealKey, utcnow
from .vault import Vault, VaultError

SEAL_VERSION = "pamflow-audit-seal/1"
DEFAULT_BLOCK_ROWS = 5000


class SealError(PamflowError):
    """The audit log could not be sealed (its chain does not hold, or no key)."""


def seal_key_aad(key_id: str) -> bytes:
    """The associated data of a seal key's vault ciphertext."""
    return f"pamflow:audit-seal-key:{key_id}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_id(public: bytes) -> str:
    return hashlib.sha256(b"pamflow-seal-key:" + public).hexdigest()[:16]


def _public_raw(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


def _private_from(row: AuditSealKey, box: Vault) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = base64.b64decode(box.decrypt(row.secret, seal_key_aad(row.key_id)))
    private = Ed25519PrivateKey.from_private_bytes(raw)
    if _b64(_public_raw(private)) != row.public_key:
        raise VaultError(f"audit seal key {row.key_id}: its public key does not match the "
                         "vault-encrypted private key (the key row was replaced)")
    return private


def signing_key(db: Session, box: Vault) -> tuple[str, Any]:
    """``(key id, Ed25519 private key)`` of the active seal key, created on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    row = db.exec(select(AuditSealKey).where(col(AuditSealKey.retired_at).is_(None))
                  .order_by(col(AuditSealKey.id).desc())).first()
    if row is not None:
        return row.key_id, _private_from(row, box)
    private = Ed25519PrivateKey.generate()
    public = _public_raw(private)
    kid = _key_id(public)
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    db.add(AuditSealKey(key_id=kid, public_key=_b64(public),
                        secret=box.encrypt(_b64(raw), seal_key_aad(kid))))
    db.flush()
    return kid, private


def public_keys(db: Session, box: Vault | None = None,
                given: Iterable[str] = ()) -> dict[str, bytes]:
    """Public keys to check signatures with, by key id: the ones ``given`` (base64 raw),
    else the store's, each proved by decrypting its private key with ``box``."""
    keys: dict[str, bytes] = {}
    for text in given:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            raise SealError("a public key must be the base64 of 32 raw Ed25519 bytes") from None
        if len(raw) != 32:
            raise SealError("a public key must be the base64 of 32 raw Ed25519 bytes")
        keys[_key_id(raw)] = raw
    if keys:
        return keys
    for row in db.exec(select(AuditSealKey)):
        if box is not None:
            keys[row.key_id] = _public_raw(_private_from(row, box))
    return keys


def export_public_key(db: Session, box: Vault) -> str:
    """The active seal key's public key (base64), for verifying away from the vault."""
    return _b64(_public_raw(signing_key(db, box)[1]))


def seal_message(seal: AuditSeal) -> bytes:
    return "\n".join((SEAL_VERSION, str(seal.number), str(seal.after_id), str(seal.last_id),
                      str(seal.count), seal.head_hash, seal.at.isoformat(), seal.prev_digest,
                      seal.key_id)).encode()


def seal_digest(seal: AuditSeal | None) -> str:
    return GENESIS if seal is None else hashlib.sha256(seal_message(seal)).hexdigest()


_TABLE = SQLModel.metadata.tables[AuditLog.__tablename__]
_COLUMNS = ("id", "at", "actor", "action", "entity", "entity_id", "detail", "prev_hash", "hash")


def _rows_after(db: Session, after_id: int, batch: int, upto: int | None = None) -> Iterator[Any]:
    query = sa.select(*(_TABLE.c[n] for n in _COLUMNS)).where(_TABLE.c.id > after_id)
    if upto is not None:
        query = query.where(_TABLE.c.id <= upto)
    yield from db.execute(query.order_by(_TABLE.c.id), execution_options={"yield_per": batch})


def last_seal(db: Session) -> AuditSeal | None:
    return db.exec(select(AuditSeal).order_by(col(AuditSeal.number).desc()).limit(1)).first()


@dataclass(frozen=True)
class SealMade:
    number: int
    after_id: int
    last_id: int
    count: int
    head_hash: str


def seal(engine: Engine, box: Vault, *, block_rows: int = DEFAULT_BLOCK_ROWS,
         actor: str = "robot:tamper-proof-log", now: datetime | None = None) -> list[SealMade]:
    """Seal every audit row not yet sealed, in blocks of at most ``block_rows`` rows (one
    transaction per block). Refuses (:class:`SealError`) when the unsealed rows do not
    continue the chain; records one audit row naming the seals made."""
    if block_rows < 1:
        raise SealError("block_rows must be at least 1")
    made: list[SealMade] = []
    while True:
        with Session(engine, expire_on_commit=False) as db:
            _chain_head(db)  # the audit writers' lock: nothing is being appended meanwhile
            prev = last_seal(db)
            after = prev.last_id if prev else _anchor_id(db)
            head = prev.head_hash if prev else _anchor_hash(db)
            count, last_id = 0, after
            query = (sa.select(*(_TABLE.c[n] for n in _COLUMNS)).where(_TABLE.c.id > after)
                     .order_by(_TABLE.c.id).limit(block_rows))
            for row in db.execute(query):
                if row.prev_hash != head or _row_digest(head, row) != row.hash:
                    raise SealError(f"audit row {row.id} does not continue the chain: refusing "
                                    "to seal (run `pamflow audit verify`)")
                head, last_id, count = row.hash, row.id, count + 1
            if count == 0:
                break
            kid, private = signing_key(db, box)
            s = AuditSeal(number=(prev.number + 1) if prev else 1, at=now or utcnow(),
                          after_id=after, last_id=last_id, count=count, head_hash=head,
                          prev_digest=seal_digest(prev), key_id=kid, signature="")
            s.signature = _b64(private.sign(seal_message(s)))
            db.add(s)
            db.commit()
            made.append(SealMade(s.number, after, last_id, count, head))
            if count < block_rows:
                break
    if made:
        with Session(engine) as db:
            record(db, actor, "audit.sealed", "audit_seal", made[-1].number,
                   {"seals": [m.number for m in made], "rows": sum(m.count for m in made),
                    "last_id": made[-1].last_id})
            db.commit()
    return made


def _archived_anchor(db: Session) -> AuditSeal | None:
    """The newest seal whose block was moved to the archive (the chain's anchor)."""
    return db.exec(select(AuditSeal).where(col(AuditSeal.archived_at).is_not(None))
                   .order_by(col(AuditSeal.number).desc()).limit(1)).first()


def _anchor_id(db: Session) -> int:
    anchor = _archived_anchor(db)
    return anchor.last_id if anchor else 0


def _anchor_hash(db: Session) -> str:
    anchor = _archived_anchor(db)
    return anchor.head_hash if anchor else GENESIS


@dataclass
class LogCheck:
    """The outcome of :func:`verify_log`."""

    rows: int = 0
    seals: int = 0
    sealed_rows: int = 0
    unsealed_rows: int = 0
    archived_seals: int = 0
    signatures_checked: bool = False
    broken_at: int | None = None  # the first altered/removed/inserted row (or next one)
    seal_broken: int | None = None  # the number of the seal it breaks
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict:
        return {"intact": self.intact, "rows": self.rows, "seals": self.seals,
                "sealed_rows": self.sealed_rows, "unsealed_rows": self.unsealed_rows,
                "archived_seals": self.archived_seals,
                "signatures_checked": self.signatures_checked, "broken_at": self.broken_at,
                "seal_broken": self.seal_broken, "reason": self.reason, "notes": self.notes}


def _check_seals(seals: list[AuditSeal], keys: dict[str, bytes] | None, out: LogCheck) -> bool:
    """Numbers, chain and signatures of the seals; False (and ``out`` says why) if broken."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    prev: AuditSeal | None = None
    for s in seals:
        expected = prev.number + 1 if prev else 1
        if s.number != expected:
            out.seal_broken, out.reason = expected, (
                f"seal #{expected} is missing (the seals jump to #{s.number}): a seal was removed")
            return False
        if prev is not None and (s.prev_digest != seal_digest(prev) or s.after_id != prev.last_id):
            out.seal_broken, out.reason = s.number, (
                f"seal #{s.number} does not follow seal #{prev.number}: a seal was altered")
            return False
        if keys is not None:
            raw = keys.get(s.key_id)
            if raw is None:
                out.seal_broken, out.reason = s.number, (
                    f"seal #{s.number} names key {s.key_id}, which is not a known seal key")
                return False
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(s.signature),
                                                               seal_message(s))
            except (InvalidSignature, ValueError):
                out.seal_broken, out.reason = s.number, (
                    f"seal #{s.number}: its signature does not match its content: the seal "
                    "was altered or forged")
                return False
        prev = s
    return True


def verify_log(db: Session, *, keys: dict[str, bytes] | None, batch: int = 2000,
               last_blocks: int | None = None) -> LogCheck:
    """Check the seals (numbers, chain, signatures when ``keys`` is given) and walk the
    audit chain from its anchor, checking every row and every seal's row count and head.

    ``last_blocks``: only the rows of the last that many sealed blocks and the unsealed
    rows after them (the robot's check every run); the anchor is then the head of the
    block before them (itself checked through its seal's signature).
    """
    out = LogCheck(signatures_checked=keys is not None)
    seals = list(db.exec(select(AuditSeal).order_by(col(AuditSeal.number))))
    out.seals = len(seals)
    if not _check_seals(seals, keys, out):
        return out
    archived = [s for s in seals if s.archived_at is not None]
    out.archived_seals = len(archived)
    if any(s.archived_at is None for s in seals[:len(archived)]):
        out.reason = "archived seals are not the oldest ones: a seal's archive mark was altered"
        return out
    live = seals[len(archived):]
    anchor = archived[-1] if archived else None
    if last_blocks is not None and len(live) > last_blocks:
        anchor = live[-last_blocks - 1]
        live = live[-last_blocks:]
    after, prev_hash = (anchor.last_id, anchor.head_hash) if anchor else (0, GENESIS)
    if archived:
        stray = db.exec(select(col(AuditLog.id)).where(col(AuditLog.id) <= archived[-1].last_id)
                        .order_by(col(AuditLog.id)).limit(1)).first()
        if stray is not None:
            out.broken_at, out.seal_broken = stray, archived[-1].number
            out.reason = (f"row {stray} is in a block already moved to the archive (seal "
                          f"#{archived[-1].number}): it was inserted or restored")
            return out
    idx, in_block, previous_id = 0, 0, None
    ends = [s.last_id for s in live]  # plain ints: the walk is per row
    next_end = ends[0] if ends else None

    def seal_at(row_id: int) -> int | None:
        for s in live[idx:]:
            if row_id <= s.last_id:
                return s.number
        return None

    for row in _rows_after(db, after, batch):
        out.rows += 1
        if next_end is not None and row.id > next_end:
            s = live[idx]
            out.broken_at, out.seal_broken = row.id, s.number
            out.reason = (f"row {s.last_id}, the last of seal #{s.number}, is missing: it was "
                          "removed")
            return out
        if row.prev_hash != prev_hash:
            where = f"row {previous_id}" if previous_id is not None else "the anchor"
            out.broken_at, out.seal_broken = row.id, seal_at(row.id)
            out.reason = (f"its prev_hash does not match {where}: a row was removed or "
                          "inserted there, or the chain re-linked")
            return out
        if _row_digest(prev_hash, row) != row.hash:
            out.broken_at, out.seal_broken = row.id, seal_at(row.id)
            out.reason = "its content does not match its hash: it was changed after it was written"
            return out
        in_block += 1
        if row.id == next_end:
            s = live[idx]
            if row.hash != s.head_hash or in_block != s.count:
                out.broken_at, out.seal_broken = row.id, s.number
                out.reason = (f"seal #{s.number} does not hold: the chain up to row {row.id} "
                              f"was rewritten ({in_block} rows, sealed {s.count})")
                return out
            out.sealed_rows += in_block
            in_block, idx = 0, idx + 1
            next_end = ends[idx] if idx < len(ends) else None
        prev_hash, previous_id = row.hash, row.id
    if idx < len(live):
        s = live[idx]
        out.broken_at, out.seal_broken = s.last_id, s.number
        out.reason = (f"rows up to {s.last_id} (sealed by seal #{s.number}) are missing "
                      f"after row {previous_id}: the newest rows were removed")
        return out
    out.unsealed_rows = in_block
    return out


def verify_archive(path: Path, seal: AuditSeal, prev_hash: str) -> str | None:
    """None when the archived block at ``path`` still holds ``seal``'s rows (every row
    chained from ``prev_hash``, the count and the head), else what is wrong."""
    count, head = 0, prev_hash
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            if item.get("table") != "audit_log":
                continue
            row = item["row"]
            at = datetime.fromisoformat(row["at"])
            values = SimpleNamespace(**{**row, "at": at})
            if row["prev_hash"] != head or _row_digest(head, values) != row["hash"]:
                return f"archived row {row['id']} does not continue the chain"
            head, count = row["hash"], count + 1
    if count != seal.count or head != seal.head_hash:
        return f"the archive holds {count} rows ending {head[:12]}; seal #{seal.number} says " \
               f"{seal.count} ending {seal.head_hash[:12]}"
    return None
