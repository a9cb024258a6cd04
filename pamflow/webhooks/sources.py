"""Webhook sources: create, rotate and list them; the gateway's cache of their secrets.

Secrets are stored encrypted with the vault (bound to the source's name and field, see
:func:`pamflow.vault.webhook_aad`) and shown once, when created or rotated. Each source
acts for one tenant, given when it is added: the gateway sets the ``tenant`` of every
payload it accepts from the source (see :mod:`pamflow.webhooks.app`). The gateway keeps
the decrypted secrets in memory and re-reads a source whenever its stored secret changes:
rotated, or removed and added again (checked every second, and when a call names a
source or signature it does not know: such calls wait for one shared re-read, at most two
a second, before they are answered).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import PamflowError
from ..models import WebhookSource, table_of, utcnow
from ..vault import vault, webhook_aad
from .signing import SOURCE_RE, generate_secret

log = logging.getLogger("pamflow.webhooks")
_SOURCES = table_of(WebhookSource)


class SourceError(PamflowError, ValueError):
    """A source name is invalid, taken or unknown."""


def _check_name(name: str) -> str:
    if not SOURCE_RE.fullmatch(name):
        raise SourceError(f"invalid source name {name!r}: use a-z, 0-9, _ and -, starting with a letter")
    return name


def _check_tenant(tenant: str) -> str:
    from ..inventory import check_tenant

    try:
        return check_tenant(tenant)
    except ValueError as exc:
        raise SourceError(str(exc)) from None


def add_source(engine: Engine, name: str, tenant: str = "default") -> str:
    """Create source ``name`` acting for ``tenant``; returns its secret (shown this once)."""
    _check_name(name)
    tenant = _check_tenant(tenant)
    secret = generate_secret()
    table = _SOURCES
    box = vault()  # opened before the transaction (opening may record the store's key canary)
    with engine.begin() as conn:
        if conn.execute(sa.select(table.c.id).where(table.c.name == name)).first():
            raise SourceError(f"source {name} exists already; use rotate-secret")
        conn.execute(table.insert().values(
            name=name, secret=box.encrypt(secret, webhook_aad(name, "secret")), secret_version=1,
            tenant=tenant, enabled=True, created_at=utcnow()))
    return secret


def rotate_secret(engine: Engine, name: str, grace_seconds: int = 0) -> str:
    """Give source ``name`` a new secret; the old one stays valid ``grace_seconds`` (0: none)."""
    table = _SOURCES
    secret = generate_secret()
    now = utcnow()
    v = vault()
    with engine.begin() as conn:
        row = conn.execute(sa.select(table.c.secret, table.c.secret_version)
                           .where(table.c.name == name)).first()
        if row is None:
            raise SourceError(f"no source named {name}")
        previous = (v.reseal(row.secret, webhook_aad(name, "secret"), webhook_aad(name, "previous"))
                    if grace_seconds > 0 else None)
        conn.execute(table.update().where(table.c.name == name).values(
            secret=v.encrypt(secret, webhook_aad(name, "secret")),
            previous_secret=previous,
            previous_valid_until=now + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None,
            secret_version=row.secret_version + 1,
            rotated_at=now))
    return secret


def remove_source(engine: Engine, name: str) -> None:
    table = _SOURCES
    with engine.begin() as conn:
        if conn.execute(table.delete().where(table.c.name == name)).rowcount == 0:
            raise SourceError(f"no source named {name}")


@dataclass(frozen=True)
class SourceInfo:
    name: str
    enabled: bool
    secret_version: int
    created_at: datetime
    rotated_at: datetime | None
    previous_valid_until: datetime | None
    tenant: str


def list_sources(engine: Engine) -> list[SourceInfo]:
    """Every source, without secrets."""
    t = _SOURCES
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.name, t.c.enabled, t.c.secret_version, t.c.created_at,
                                      t.c.rotated_at, t.c.previous_valid_until, t.c.tenant)
                            .order_by(t.c.name))
        return [SourceInfo(*row) for row in rows]


@dataclass
class _Entry:
    sealed: tuple  # the row's ciphertexts and grace end: new on every add, rotate or re-add
    current: bytes | None  # None: the secret could not be decrypted; calls are refused
    previous: bytes | None
    previous_valid_until: float  # time.time(); 0 when none
    tenant: str = "default"


class SecretCache:
    """Decrypted source secrets, in memory, refreshed when a source's stored secret changes.

    A change is seen by comparing the stored ciphertexts (a fresh nonce each time), so a
    source removed and added again under the same name and version is re-read too. A
    source whose secret cannot be decrypted (another master key, a damaged row) is logged
    by name and refused like an unknown source until its row changes; the other sources
    keep refreshing.
    """

    # a key for unknown sources, so an unknown source costs the same HMAC as a known one
    _DUMMY = [secrets.token_bytes(32)]

    def __init__(self, engine: Engine, min_interval: float = 0.5) -> None:
        self.engine = engine
        self.min_interval = min_interval
        self._entries: dict[str, _Entry] = {}
        self._last_refresh = 0.0
        self._lock = threading.Lock()

    def candidates(self, source: str) -> tuple[bool, list[bytes]]:
        """(known, secrets to try) for ``source``; unknown sources get a dummy key."""
        entry = self._entries.get(source)
        if entry is None or entry.current is None:
            return False, self._DUMMY
        keys = [entry.current]
        if entry.previous is not None and time.time() < entry.previous_valid_until:
            keys.append(entry.previous)
        return True, keys

    def tenant(self, source: str) -> str | None:
        """The tenant ``source`` acts for (None for an unknown source)."""
        entry = self._entries.get(source)
        return entry.tenant if entry is not None else None

    @property
    def last_refresh(self) -> float:
        """``time.monotonic()`` when the last re-read started."""
        return self._last_refresh

    def refresh(self) -> bool:
        """Re-read sources whose stored secret changed (blocking; run it in a thread).

        True if any did.
        """
        t = _SOURCES
        vault()  # opened (its key checked against the store) before the first source is served
        with self._lock:
            self._last_refresh = time.monotonic()
            with self.engine.connect() as conn:
                rows = list(conn.execute(sa.select(t.c.name, t.c.secret, t.c.previous_secret,
                                                   t.c.previous_valid_until, t.c.tenant)
                                         .where(t.c.enabled.is_(True))))
            entries: dict[str, _Entry] = {}
            changed = False
            for r in rows:
                sealed = (r.secret, r.previous_secret, r.previous_valid_until, r.tenant)
                entry = self._entries.get(r.name)
                if entry is None or entry.sealed != sealed:
                    entry = _decrypt(r, sealed)
                    changed = True
                entries[r.name] = entry
            changed |= len(entries) != len(self._entries)
            self._entries = entries
            return changed

    @property
    def names(self) -> list[str]:
        """The sources whose calls can be checked (decrypted secrets)."""
        return sorted(n for n, e in self._entries.items() if e.current is not None)


def _decrypt(row, sealed: tuple) -> _Entry:
    """The cache entry of one source row; never raises (a bad row is logged by name)."""
    v = vault()
    try:
        current = v.decrypt(row.secret, webhook_aad(row.name, "secret")).encode()
    except Exception as exc:  # noqa: BLE001 - one bad row must not stop the others
        log.warning("webhook source %s: its secret cannot be decrypted (%s); its calls are "
                    "refused until it is rotated or added again", row.name, exc.__class__.__name__)
        return _Entry(sealed=sealed, current=None, previous=None, previous_valid_until=0.0,
                      tenant=row.tenant)
    previous = None
    if row.previous_secret and row.previous_valid_until:
        try:
            previous = v.decrypt(row.previous_secret, webhook_aad(row.name, "previous")).encode()
        except Exception as exc:  # noqa: BLE001 - the current secret still works
            log.warning("webhook source %s: its previous secret cannot be decrypted (%s); only "
                        "the current one is accepted", row.name, exc.__class__.__name__)
    return _Entry(sealed=sealed, current=current, previous=previous,
                  previous_valid_until=row.previous_valid_until.timestamp() if previous else 0.0,
                  tenant=row.tenant)
