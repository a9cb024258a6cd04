"""Webhook sources: create, rotate and list them; the gateway's cache of their secrets.

Secrets are stored encrypted with the vault (bound to the source's name and field, see
:func:`pamflow.vault.webhook_aad`) and shown once, when created or rotated. Each source
acts for one tenant, given when it is added: the gateway sets the ``tenant`` of every
payload it accepts from the source (see :mod:`pamflow.webhooks.app`). The gateway keeps
the decrypted secrets in memory and re-reads a source whenever its ``secret_version``
changes (checked every second, and when a call names a source or signature it does not
know: such calls wait for one shared re-read, at most two a second, before they are
answered).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..models import WebhookSource, utcnow
from ..vault import vault, webhook_aad
from .signing import SOURCE_RE, generate_secret


class SourceError(ValueError):
    """A source name is invalid, taken or unknown."""


def _check_name(name: str) -> str:
    if not SOURCE_RE.fullmatch(name):
        raise SourceError(f"invalid source name {name!r}: use a-z, 0-9, _ and -, starting with a letter")
    return name


def _check_tenant(tenant: str) -> str:
    from ..importer import check_tenant

    try:
        return check_tenant(tenant)
    except ValueError as exc:
        raise SourceError(str(exc)) from None


def add_source(engine: Engine, name: str, tenant: str = "default") -> str:
    """Create source ``name`` acting for ``tenant``; returns its secret (shown this once)."""
    _check_name(name)
    tenant = _check_tenant(tenant)
    secret = generate_secret()
    table = WebhookSource.__table__
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
    table = WebhookSource.__table__
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
    table = WebhookSource.__table__
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
    t = WebhookSource.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.name, t.c.enabled, t.c.secret_version, t.c.created_at,
                                      t.c.rotated_at, t.c.previous_valid_until, t.c.tenant)
                            .order_by(t.c.name))
        return [SourceInfo(*row) for row in rows]


@dataclass
class _Entry:
    version: int
    current: bytes
    previous: bytes | None
    previous_valid_until: float  # time.time(); 0 when none
    tenant: str = "default"


class SecretCache:
    """Decrypted source secrets, in memory, refreshed when a source's version changes."""

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
        if entry is None:
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
        """Re-read sources whose version changed (blocking; run it in a thread). True if any did."""
        t = WebhookSource.__table__
        vault()  # opened (its key checked against the store) before the first source is served
        with self._lock:
            self._last_refresh = time.monotonic()
            with self.engine.connect() as conn:
                versions = {r.name: r for r in conn.execute(
                    sa.select(t.c.name, t.c.secret_version, t.c.enabled, t.c.previous_valid_until))}
                stale = [n for n, r in versions.items()
                         if r.enabled and (n not in self._entries
                                           or self._entries[n].version != r.secret_version)]
                changed = bool(stale)
                entries = {n: e for n, e in self._entries.items()
                           if n in versions and versions[n].enabled}
                changed |= len(entries) != len(self._entries)
                if stale:
                    rows = conn.execute(sa.select(t.c.name, t.c.secret, t.c.secret_version,
                                                  t.c.previous_secret, t.c.previous_valid_until,
                                                  t.c.tenant)
                                        .where(t.c.name.in_(stale)))
                    v = vault()
                    for r in rows:
                        previous = (v.decrypt(r.previous_secret, webhook_aad(r.name, "previous"))
                                    .encode() if r.previous_secret and r.previous_valid_until else None)
                        entries[r.name] = _Entry(
                            version=r.secret_version,
                            current=v.decrypt(r.secret, webhook_aad(r.name, "secret")).encode(),
                            previous=previous,
                            previous_valid_until=(r.previous_valid_until.timestamp()
                                                  if previous else 0.0),
                            tenant=r.tenant)
            self._entries = entries
            return changed

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)
