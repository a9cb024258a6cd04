"""The vault and the store together: opening the vault for a store, its status, rekeying.

Opening (:func:`open_vault`)
----------------------------
The store records which key sealed it: the system parameter ``vault.canary`` holds a
known text encrypted under the active key. Opening the vault for a store

- with no key configured on this host (no ``PAMFLOW_MASTER_KEY``, no key file): creates a
  key file only when the store holds no ciphertext and no canary; otherwise refuses,
  naming the key id the store's secrets were sealed with;
- with a key: decrypts the canary; when this host's keys cannot, refuses with
  "this store's secrets were sealed with key id X; this host has Y". A store without a
  canary gets one, after one of its ciphertexts (if any) was decrypted successfully.

So two hosts never seal secrets of one store with two different keys: the second one
refuses to start (``pamflow up``, the executors and the gateway all open the vault first).

Status and rekey
----------------
Every ciphertext column is listed in :data:`SEALED`. :func:`status` counts ciphertexts
per column and key id and tries to decrypt each; :func:`rekey` re-encrypts every
ciphertext not under the active key, in chunks (one transaction each, each row updated
only if it still holds the ciphertext that was read), so old keys can be retired.
``rekey`` first decrypts everything and refuses to change anything when any
ciphertext cannot be decrypted: a key that is still needed must not be retired.
Both are idempotent and safe while the platform runs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .models import (
    AuditSealKey,
    Credential,
    CredentialHistory,
    SystemParameter,
    VaultEntry,
    WebhookSource,
    table_of,
    utcnow,
)
from .vault import (
    CANARY_AAD,
    Keyring,
    NoMasterKey,
    Vault,
    VaultError,
    credential_aad,
    key_file_path,
    vault_entry_aad,
    webhook_aad,
)

log = logging.getLogger(__name__)

CANARY_KEY = "vault.canary"
CANARY_TEXT = "pamflow vault canary"
CHUNK = 1000

_C = table_of(Credential)
_H = table_of(CredentialHistory)
_W = table_of(WebhookSource)
_P = table_of(SystemParameter)
_E = table_of(VaultEntry)
_K = table_of(AuditSealKey)


@dataclass(frozen=True)
class SealedColumn:
    """A column holding ciphertexts, and how to find each row's associated data."""

    name: str  # table.column, for reports
    table: sa.Table
    column: str
    select: Callable[[], sa.Select]  # (id, token, *aad parts), ordered by id
    aad: Callable[[tuple], bytes]


def _credential_column(column: str, fld: str) -> SealedColumn:
    return SealedColumn(
        f"credential.{column}", _C, column,
        lambda: sa.select(_C.c.id, _C.c[column], _C.c.device_id).where(_C.c[column].is_not(None)),
        lambda row: credential_aad(row[0], row[2], fld))


def _webhook_column(column: str, fld: str) -> SealedColumn:
    return SealedColumn(
        f"webhook_source.{column}", _W, column,
        lambda: sa.select(_W.c.id, _W.c[column], _W.c.name).where(_W.c[column].is_not(None)),
        lambda row: webhook_aad(row[2], fld))


SEALED: tuple[SealedColumn, ...] = (
    _credential_column("secret", "secret"),
    _credential_column("pending_secret", "pending"),
    _credential_column("candidate_secret", "candidate"),
    SealedColumn(
        "credential_history.secret", _H, "secret",
        lambda: sa.select(_H.c.id, _H.c.secret, _H.c.credential_id, _C.c.device_id)
        .join(_C, _C.c.id == _H.c.credential_id),
        lambda row: credential_aad(row[2], row[3], "history")),
    _webhook_column("secret", "secret"),
    _webhook_column("previous_secret", "previous"),
    SealedColumn(
        "vault_entry.secret", _E, "secret",
        lambda: sa.select(_E.c.id, _E.c.secret, _E.c.name),
        lambda row: vault_entry_aad(row[2])),
    SealedColumn(  # the audit seal signing key (pamflow.audit_seal)
        "audit_seal_key.secret", _K, "secret",
        lambda: sa.select(_K.c.id, _K.c.secret, _K.c.key_id),
        lambda row: f"pamflow:audit-seal-key:{row[2]}".encode()),
)


def iter_sealed(conn: Connection, col: SealedColumn, chunk: int = CHUNK
                ) -> Iterator[list[tuple[int, str, bytes]]]:
    """Chunks of ``(row id, ciphertext, associated data)`` of one column, by id."""
    table = col.table
    last = 0
    while True:
        rows = conn.execute(col.select().where(table.c.id > last).order_by(table.c.id).limit(chunk)).all()
        if not rows:
            return
        yield [(row[0], row[1], col.aad(tuple(row))) for row in rows]
        last = rows[-1][0]


def _canary(conn: Connection) -> str | None:
    return conn.execute(sa.select(_P.c.value).where(_P.c.key == CANARY_KEY)).scalar()


def first_ciphertext(conn: Connection) -> tuple[str, str, bytes] | None:
    """``(column name, ciphertext, associated data)`` of some stored ciphertext, or None."""
    for col in SEALED:
        row = conn.execute(col.select().order_by(col.table.c.id).limit(1)).first()
        if row is not None:
            return col.name, row[1], col.aad(tuple(row))
    return None


def _mismatch(sealed_with: str, box: Vault) -> VaultError:
    return VaultError(
        f"this store's secrets were sealed with key id {sealed_with}; this host has "
        f"{', '.join(sorted(box.keyring.keys))}. Configure the store's master key on this host "
        f"(PAMFLOW_MASTER_KEY, or the key file {key_file_path()} copied from a host that has "
        "it); a key created here by mistake can be removed")


def open_vault(engine: Engine) -> Vault:
    """The vault for ``engine``'s store, checked against the store's canary (see module doc)."""
    try:
        ring = Keyring.load()
    except NoMasterKey as missing:
        with engine.connect() as conn:
            canary = _canary(conn)
            sample = None if canary else first_ciphertext(conn)
        sealed = canary if canary else sample[1] if sample is not None else None
        if sealed is not None:
            kid = Vault.key_id_of(sealed)
            raise VaultError(
                f"{missing}, but this store's secrets were sealed with key id {kid}: set "
                f"PAMFLOW_MASTER_KEY, or copy the key file from a host that has it to "
                f"{key_file_path()} (mode 0600). A new key is created only for a store "
                "without secrets.") from None
        ring = Keyring.load(create=True)
    box = Vault(ring)
    check_canary(engine, box)
    return box


def check_canary(engine: Engine, box: Vault) -> None:
    """Refuse ``box`` when it cannot open the store's canary; record one when missing."""
    for _attempt in range(2):
        with engine.connect() as conn:
            canary = _canary(conn)
            sample = None if canary else first_ciphertext(conn)
        if canary is not None:
            try:
                if box.decrypt(canary, CANARY_AAD) == CANARY_TEXT:
                    return
            except VaultError:
                pass
            raise _mismatch(Vault.key_id_of(canary), box)
        if sample is not None:
            name, token, aad = sample
            try:
                box.decrypt(token, aad)
            except VaultError:
                raise _mismatch(Vault.key_id_of(token), box) from None
        try:
            _record_canary(engine, box)
            return
        except sa.exc.IntegrityError:
            continue  # another host recorded its canary first: check against that one
        except sa.exc.OperationalError as exc:
            # the check passed; recording waits for a store that is not locked (a caller
            # of this process may hold SQLite's write lock): the next opening records it
            log.warning("vault canary not recorded now (%s); it is on the next start",
                        exc.__class__.__name__)
            return
    raise VaultError("could not record the vault canary")


def _record_canary(engine: Engine, box: Vault) -> None:
    with engine.begin() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # do not wait 30 s on a lock this very process may hold
            conn.exec_driver_sql("PRAGMA busy_timeout=2000")
        try:
            conn.execute(_P.insert().values(
                key=CANARY_KEY, value=box.encrypt(CANARY_TEXT, CANARY_AAD),
                description="the vault's key check: a known text sealed with the store's key",
                updated_at=utcnow()))
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA busy_timeout=30000")


# ----------------------------------------------------------------------------- status
@dataclass
class Undecryptable:
    column: str
    row_id: int
    reason: str


@dataclass
class VaultStatus:
    active: str
    keys: list[str]
    by_column: dict[str, Counter] = field(default_factory=dict)  # column -> key id -> count
    undecryptable: list[Undecryptable] = field(default_factory=list)
    undecryptable_total: int = 0
    canary_key_id: str | None = None

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.by_column.values())

    def by_key(self) -> Counter:
        out: Counter = Counter()
        for c in self.by_column.values():
            out.update(c)
        return out


def status(engine: Engine, box: Vault, keep: int = 100) -> VaultStatus:
    """Ciphertexts per column and key id; each one decrypted to find any that cannot be."""
    out = VaultStatus(active=box.active_key_id, keys=sorted(box.keyring.keys))
    with engine.connect() as conn:
        canary = _canary(conn)
        out.canary_key_id = Vault.key_id_of(canary) if canary else None
        for col in SEALED:
            counts: Counter = Counter()
            for chunk in iter_sealed(conn, col):
                for row_id, token, aad in chunk:
                    counts[Vault.key_id_of(token)] += 1
                    try:
                        box.decrypt(token, aad)
                    except VaultError as exc:
                        out.undecryptable_total += 1
                        if len(out.undecryptable) < keep:
                            out.undecryptable.append(Undecryptable(col.name, row_id, str(exc)))
            out.by_column[col.name] = counts
    return out


# ----------------------------------------------------------------------------- rekey
class RekeyRefused(VaultError):
    """Some ciphertexts cannot be decrypted: rekey changed nothing."""

    def __init__(self, found: VaultStatus) -> None:
        rows = ", ".join(f"{u.column} id {u.row_id}" for u in found.undecryptable[:20])
        more = found.undecryptable_total - min(20, len(found.undecryptable))
        super().__init__(
            f"{found.undecryptable_total} ciphertext(s) cannot be decrypted with this host's keys "
            f"({rows}{f' and {more} more' if more > 0 else ''}); nothing was re-encrypted. "
            "Configure the key(s) they were sealed with, then run rekey again")
        self.found = found


def rekey(engine: Engine, box: Vault, chunk: int = CHUNK) -> dict[str, dict[str, int]]:
    """Re-encrypt every ciphertext not under the active key; counts per column.

    ``{"credential.secret": {"rekeyed": n, "current": m, "changed_meanwhile": k}, ...}``
    (``current``: already under the active key; ``changed_meanwhile``: rewritten by
    someone else between read and update, hence under the active key too).
    Raises :class:`RekeyRefused`, changing nothing, when any ciphertext cannot be decrypted.
    """
    found = status(engine, box)
    if found.undecryptable_total:
        raise RekeyRefused(found)
    counts: dict[str, dict[str, int]] = {}
    active = box.active_key_id
    for col in SEALED:
        tally = {"rekeyed": 0, "current": 0, "changed_meanwhile": 0}
        with engine.connect() as reader:
            for rows in iter_sealed(reader, col, chunk):
                stale = [(rid, tok, aad) for rid, tok, aad in rows if Vault.key_id_of(tok) != active]
                tally["current"] += len(rows) - len(stale)
                if not stale:
                    continue
                column = col.table.c[col.column]
                with engine.begin() as conn:
                    for rid, token, aad in stale:
                        fresh = box.encrypt(box.decrypt(token, aad), aad)
                        done = conn.execute(col.table.update().where(
                            col.table.c.id == rid, column == token).values({col.column: fresh}))
                        tally["rekeyed" if done.rowcount else "changed_meanwhile"] += 1
        counts[col.name] = tally
    with engine.begin() as conn:
        canary = _canary(conn)
        tally = {"rekeyed": 0, "current": 0, "changed_meanwhile": 0}
        if canary is not None and Vault.key_id_of(canary) != active:
            fresh = box.encrypt(box.decrypt(canary, CANARY_AAD), CANARY_AAD)
            conn.execute(_P.update().where(_P.c.key == CANARY_KEY, _P.c.value == canary)
                         .values(value=fresh, updated_at=utcnow()))
            tally["rekeyed"] = 1
        elif canary is not None:
            tally["current"] = 1
        counts["system_parameter.vault.canary"] = tally
    return counts


__all__ = ["CANARY_KEY", "SEALED", "RekeyRefused", "SealedColumn", "Undecryptable", "VaultStatus",
           "check_canary", "first_ciphertext", "iter_sealed", "open_vault", "rekey", "status"]
