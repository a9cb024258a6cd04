"""Routing: which users or groups get which types or families, on which channel, at once or
in the daily digest; per tenant.

A route says: notifications of ``tenant`` whose type (or its renamed twin), family, or
anything (``*``) matches ``match`` and whose severity is at least ``min_severity`` go to
``recipient`` on ``channel`` (``email``, ``syslog`` or ``webhook``), ``immediate`` or in
the daily ``digest``.

Recipients: on ``email``, ``user:NAME`` (the active PAM user's address), ``group:NAME``
(the addresses of an access group's active members) or an address; on ``syslog``,
``udp://host:port`` or ``tcp://host:port``; on ``webhook``, an ``https://`` URL (``http://``
only to a loopback address) and ``secret_ref``, the notification secret that signs it.

Routes live in the store (``pamflow notifications routes add|remove|list``) and in the
Prefect block *Notification routing* (edited in the UI); the sender uses both.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ..errors import PamflowError
from ..models import AccessGroup, AccessGroupMember, NotificationRoute, User
from .catalogue import CATALOGUE, FAMILIES, SEVERITIES

CHANNELS = ("email", "syslog", "webhook")
MODES = ("immediate", "digest")
EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$")
NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RouteError(PamflowError, ValueError):
    """A route is refused (unknown type or family, bad recipient for its channel...)."""


@dataclass(frozen=True)
class Route:
    match: str
    recipient: str
    channel: str = "email"
    mode: str = "immediate"
    min_severity: str = "info"
    tenant: str = "default"
    secret_ref: str | None = None
    id: int | None = None
    source: str = "store"  # store | block

    def matches(self, type_name: str, family: str, severity: str, tenant: str) -> bool:
        if tenant != self.tenant:
            return False
        if SEVERITIES.index(severity) < SEVERITIES.index(self.min_severity):
            return False
        if self.match in ("*", family):
            return True
        kind = CATALOGUE.get(type_name)
        return self.match in (kind.names if kind else (type_name,))

    def as_dict(self) -> dict:
        return asdict(self)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(route: Route) -> Route:
    """The route, checked; :class:`RouteError` says what is wrong."""
    if not TENANT_RE.match(route.tenant or ""):
        raise RouteError(f"tenant {route.tenant[:80]!r} is not a tenant name")
    if route.match != "*" and route.match not in CATALOGUE and route.match not in FAMILIES:
        raise RouteError(f"{route.match[:120]!r} is neither a notification type, a family nor *; "
                         "see `pamflow notifications types`")
    if route.channel not in CHANNELS:
        raise RouteError(f"channel must be one of {', '.join(CHANNELS)}")
    if route.mode not in MODES:
        raise RouteError(f"mode must be one of {', '.join(MODES)}")
    if route.min_severity not in SEVERITIES:
        raise RouteError(f"min_severity must be one of {', '.join(SEVERITIES)}")
    r = route.recipient
    if not r or len(r) > 2048 or any(ord(c) < 32 or ord(c) == 127 for c in r):
        raise RouteError("recipient is empty, longer than 2048 characters or has control characters")
    if route.channel == "email":
        kind, _, name = r.partition(":")
        if kind in ("user", "group") and name:
            if not NAME_RE.match(name):
                raise RouteError(f"{kind} name {name[:80]!r} has characters a {kind} name cannot have")
        elif not EMAIL_RE.match(r):
            raise RouteError(f"{r[:120]!r} is not user:NAME, group:NAME or an e-mail address")
    elif route.channel == "syslog":
        parts = urlsplit(r)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or parts.path not in ("", "/"):
            raise RouteError("a syslog recipient is udp://host:port or tcp://host:port")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise RouteError("the syslog port is not a port number") from None
    else:
        parts = urlsplit(r)
        if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
            pass
        elif parts.scheme != "https" or not parts.hostname:
            raise RouteError("a webhook recipient is an https:// URL (http:// only to a loopback address)")
        if not route.secret_ref or not NAME_RE.match(route.secret_ref):
            raise RouteError("a webhook route needs --secret: the notification secret that signs it "
                             "(`pamflow notifications secret set NAME`)")
    return route


def add_route(db: Session, route: Route) -> NotificationRoute:
    """Add ``route`` (or update the mode/severity/secret of the same match, recipient and channel)."""
    validate(route)
    row = db.exec(select(NotificationRoute).where(
        col(NotificationRoute.tenant) == route.tenant, col(NotificationRoute.match) == route.match,
        col(NotificationRoute.recipient) == route.recipient,
        col(NotificationRoute.channel) == route.channel)).first()
    if row is None:
        row = NotificationRoute(tenant=route.tenant, match=route.match, recipient=route.recipient,
                                channel=route.channel)
    row.mode, row.min_severity, row.secret_ref, row.enabled = (route.mode, route.min_severity,
                                                                route.secret_ref, True)
    db.add(row)
    db.flush()
    return row


def remove_route(db: Session, route_id: int, tenant: str | None = None) -> bool:
    row = db.get(NotificationRoute, route_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        return False
    db.delete(row)
    return True


def stored_routes(db: Session, tenant: str | None = None) -> list[Route]:
    q = select(NotificationRoute).where(col(NotificationRoute.enabled).is_(True))
    if tenant is not None:
        q = q.where(col(NotificationRoute.tenant) == tenant)
    return [Route(match=r.match, recipient=r.recipient, channel=r.channel, mode=r.mode,
                  min_severity=r.min_severity, tenant=r.tenant, secret_ref=r.secret_ref, id=r.id)
            for r in db.exec(q.order_by(col(NotificationRoute.id))).all()]


def routes_for(n: Any, routes: Iterable[Route]) -> list[Route]:
    return [r for r in routes if r.matches(n.type, n.family, n.severity, n.tenant)]


class Directory:
    """Resolves ``user:`` and ``group:`` recipients to addresses (cached for one pass)."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self._cache: dict[str, list[str]] = {}

    def addresses(self, recipient: str) -> list[str]:
        hit = self._cache.get(recipient)
        if hit is not None:
            return hit
        kind, _, name = recipient.partition(":")
        found: list[str]
        if kind == "user" and name:
            found = [e for (e,) in self.db.execute(
                sa.select(col(User.email)).where(col(User.username) == name,
                                                 col(User.status) == "active")).all() if e]
        elif kind == "group" and name:
            found = sorted({e for (e,) in self.db.execute(
                sa.select(col(User.email))
                .join(AccessGroupMember, col(AccessGroupMember.user_id) == col(User.id))
                .join(AccessGroup, col(AccessGroup.id) == col(AccessGroupMember.group_id))
                .where(col(AccessGroup.name) == name, col(User.status) == "active")).all() if e})
        else:
            found = [recipient]
        found = [e for e in found if EMAIL_RE.match(e)]
        self._cache[recipient] = found
        return found


def explicit_routes(n: Any) -> Sequence[Route]:
    """The recipients the robot named when queueing: e-mail, immediate."""
    out = []
    for r in n.recipients or []:
        route = Route(match=n.type, recipient=str(r), tenant=n.tenant)
        try:
            out.append(validate(route))
        except RouteError:
            continue
    return out
