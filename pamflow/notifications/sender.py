"""The email sender's rules: route queued notifications into messages (storm control and the
daily digest), then deliver messages exactly once as far as pamflow can tell.

Planning (:func:`plan`), one transaction: queued notifications that have settled
(``settle_s``) are matched against the routes; per tenant, recipient, channel and type,
one notification makes one message, several make ONE message listing them (1,000 devices
lost in one connectivity run: one mail per recipient, not 1,000). Digest routes park a
part row (state ``digest``) that :func:`plan_digest` gathers into one message per
recipient and day. A notification no route matches is ``unrouted`` (kept, listed).

Delivery (:func:`deliver`): a sender claims due messages with a lease (``lease_owner``,
``lease_until``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), opens each channel once per
batch, and records each message ``sent`` in its own commit once the server took it (while
the server answers the next message's MAIL FROM, and always before that message's DATA).
A failure sets ``next_attempt_at`` with exponential backoff; after ``max_attempts`` (or a
permanent refusal, SMTP 5xx) the message is ``dead`` with its error. A sender killed
mid-batch leaves its claimed messages leased; when the lease expires another sender takes
them, with the same Message-ID. At most one message is ever accepted by a server and not
yet recorded: a crash in that window (one commit and one SMTP command long) sends it again
with the same Message-ID, which lets the receiving side discard it; a message is never
dropped.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..models import Notification, NotificationMessage
from ..models._base import table_of, utcnow
from .catalogue import CATALOGUE
from .channels import Channel, DeliveryError, OutMessage
from .routing import Directory, Route, explicit_routes, routes_for, stored_routes
from .templates import render_digest, render_group

log = logging.getLogger(__name__)

DIGEST_TYPE = "Daily digest"
_MSG = table_of(NotificationMessage)


@dataclass(frozen=True)
class SenderSettings:
    batch_size: int = 500
    lease_s: float = 300.0
    max_attempts: int = 5
    backoff_s: float = 30.0
    backoff_max_s: float = 3600.0
    settle_s: float = 0.0
    plan_limit: int = 20000
    group_listed: int = 200
    message_domain: str = "pamflow.local"


@dataclass
class PlanReport:
    notifications: int = 0
    messages: int = 0
    grouped: int = 0  # notifications that went into a message with others
    digest_parts: int = 0
    unrouted: int = 0


@dataclass
class DeliverReport:
    sent: int = 0
    retried: int = 0
    dead: int = 0
    batches: int = 0
    connections: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add_row(self, msg: OutMessage, state: str, error: str | None = None, limit: int = 500) -> None:
        if len(self.rows) < limit:
            self.rows.append({"id": msg.id, "type": msg.type, "channel": msg.channel,
                              "recipient": msg.recipient, "state": state,
                              "attempts": msg.attempts + (0 if state == "sent" else 1),
                              "error": (error or "")[:200]})


class MessageIds:
    """Message-IDs for one planning pass: a fresh 96-bit random prefix and a counter (unique
    without asking the OS for randomness per message)."""

    def __init__(self, domain: str) -> None:
        self.prefix = secrets.token_hex(12)
        self.domain = domain
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"<pamflow.{self.prefix}.{self.n}@{self.domain}>"


def new_message_id(domain: str) -> str:
    return MessageIds(domain)()


# ----------------------------------------------------------------------------- planning
def _queued(db: Session, now: datetime, settings: SenderSettings) -> list[Any]:
    """Queued rows, only the columns routing needs (plain rows: no ORM objects to build)."""
    n = table_of(Notification).c
    q = (sa.select(n.id, n.type, n.family, n.tenant, n.severity, n.subject, n.body, n.html,
                   n.recipients, n.repeats)
         .where(n.state == "queued", n.created_at <= now - timedelta(seconds=settings.settle_s))
         .order_by(n.id).limit(settings.plan_limit))
    if db.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return list(db.execute(q).all())


def plan(engine: Engine, extra_routes: Sequence[Route] = (), settings: SenderSettings | None = None,
         now: datetime | None = None) -> PlanReport:
    """Route queued notifications into messages (one transaction)."""
    settings = settings or SenderSettings()
    now = now or utcnow()
    report = PlanReport()
    with Session(engine) as db:
        rows = _queued(db, now, settings)
        if not rows:
            return report
        report.notifications = len(rows)
        routes = stored_routes(db) + list(extra_routes)
        directory = Directory(db)
        ids = MessageIds(settings.message_domain)
        # (tenant, channel, address, type, secret_ref) -> notifications
        buckets: dict[tuple[str, str, str, str, str | None], list[Any]] = defaultdict(list)
        parts: list[dict[str, Any]] = []
        routed: list[int | None] = []
        unrouted: list[int | None] = []
        for n in rows:
            matched = routes_for(n, routes) + list(explicit_routes(n))
            targets: set[tuple[str, str, str | None, str]] = set()
            for r in matched:
                addresses = directory.addresses(r.recipient) if r.channel == "email" else [r.recipient]
                for address in addresses:
                    targets.add((r.channel, address, r.secret_ref, r.mode))
            immediate = {(c, a, s) for c, a, s, m in targets if m == "immediate"}
            for c, a, s, m in sorted(targets, key=str):
                if m == "digest" and (c, a, s) not in immediate:
                    parts.append(_part(n, c, a, s, settings, now))
            for c, a, s in immediate:
                buckets[(n.tenant, c, a, n.type, s)].append(n)
            (routed if targets else unrouted).append(n.id)
            if not targets:
                report.unrouted += 1
        messages = []
        for (tenant, channel, address, type_name, secret_ref), group in buckets.items():
            messages.append(_message(tenant, channel, address, type_name, secret_ref, group,
                                     settings, now, ids))
            if len(group) > 1:
                report.grouped += len(group)
        for values in parts:
            values["message_id"] = ids()
        if messages or parts:
            db.execute(sa.insert(_MSG), messages + parts)
        table = table_of(Notification)
        for state, ids_ in (("routed", routed), ("unrouted", unrouted)):
            for i in range(0, len(ids_), 500):  # bulk: one statement per 500 rows, not per row
                db.execute(sa.update(table).where(table.c.id.in_(ids_[i:i + 500]))
                           .values(state=state, routed_at=now))
        report.messages = len(messages)
        report.digest_parts = len(parts)
        db.commit()
    return report


def _base(tenant: str, channel: str, address: str, type_name: str, severity: str,
          secret_ref: str | None, settings: SenderSettings, now: datetime) -> dict[str, Any]:
    return {"message_id": None, "tenant": tenant,
            "channel": channel, "recipient": address, "type": type_name, "severity": severity,
            "secret_ref": secret_ref, "attempts": 0, "next_attempt_at": now, "created_at": now}


def _repeat_note(n: Any) -> str:
    return f" (seen {n.repeats + 1} times)" if n.repeats else ""


def _message(tenant: str, channel: str, address: str, type_name: str, secret_ref: str | None,
             group: list[Any], settings: SenderSettings, now: datetime,
             ids: MessageIds) -> dict[str, Any]:
    first = group[0]
    values = _base(tenant, channel, address, type_name, first.severity, secret_ref, settings, now)
    values["message_id"] = ids()
    values["notification_ids"] = [n.id for n in group]
    if len(group) == 1:
        values.update(subject=first.subject + _repeat_note(first), text=first.body, html=first.html,
                      state="pending", sent_at=None)
        return values
    r = render_group(CATALOGUE[type_name], [n.subject + _repeat_note(n) for n in group], tenant,
                     listed=settings.group_listed)
    values.update(subject=r.subject, text=r.text, html=r.html, state="pending", sent_at=None)
    return values


def _part(n: Any, channel: str, address: str, secret_ref: str | None,
          settings: SenderSettings, now: datetime) -> dict[str, Any]:
    values = _base(n.tenant, channel, address, n.type, n.severity, secret_ref, settings, now)
    values.update(subject=n.subject + _repeat_note(n), text=n.body, html=None, sent_at=None,
                  notification_ids=[n.id], state="digest")
    return values


def plan_digest(engine: Engine, settings: SenderSettings | None = None,
                now: datetime | None = None) -> int:
    """Gather parked digest parts into one message per tenant, channel and recipient; the
    parts become ``merged``. Returns the number of digest messages made."""
    settings = settings or SenderSettings()
    now = now or utcnow()
    with Session(engine) as db:
        q = select(NotificationMessage).where(col(NotificationMessage.state) == "digest").order_by(
            col(NotificationMessage.id))
        if db.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        parts = list(db.exec(q).all())
        by_recipient: dict[tuple[str, str, str, str | None], list[NotificationMessage]] = defaultdict(list)
        for p in parts:
            by_recipient[(p.tenant, p.channel, p.recipient, p.secret_ref)].append(p)
        made = 0
        for (tenant, channel, address, secret_ref), items in by_recipient.items():
            by_type: dict[str, list[NotificationMessage]] = defaultdict(list)
            for p in items:
                by_type[p.type].append(p)
            sections = [{"type": t, "count": len(ps),
                         "items": [p.subject for p in ps[: settings.group_listed]],
                         "more": max(0, len(ps) - settings.group_listed)}
                        for t, ps in sorted(by_type.items())]
            r = render_digest(sections, tenant)
            values = _base(tenant, channel, address, DIGEST_TYPE, "info", secret_ref, settings, now)
            values["message_id"] = new_message_id(settings.message_domain)
            values.update(subject=r.subject, text=r.text, html=r.html, state="pending",
                          notification_ids=sorted({i for p in items for i in p.notification_ids}))
            db.execute(sa.insert(_MSG).values(**values))
            db.execute(sa.update(_MSG).where(_MSG.c.id.in_([p.id for p in items]))
                       .values(state="merged", sent_at=now))
            made += 1
        db.commit()
    return made


# ----------------------------------------------------------------------------- delivery
def claim(engine: Engine, owner: str, limit: int, lease_s: float, now: datetime | None = None,
          channels: Iterable[str] | None = None) -> list[OutMessage]:
    """Lease up to ``limit`` due messages to ``owner`` (expired leases are taken over)."""
    now = now or utcnow()
    until = now + timedelta(seconds=lease_s)
    m = _MSG.c
    due = sa.select(m.id).where(m.state == "pending", m.next_attempt_at <= now,
                                sa.or_(m.lease_until.is_(None), m.lease_until < now))
    if channels is not None:
        due = due.where(m.channel.in_(list(channels)))
    due = due.order_by(m.id).limit(limit)
    with Session(engine) as db:
        if db.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = [i for (i,) in db.execute(due).all()]
        if not ids:
            return []
        db.execute(sa.update(_MSG).where(m.id.in_(ids), m.state == "pending",
                                         sa.or_(m.lease_until.is_(None), m.lease_until < now))
                   .values(lease_owner=owner, lease_until=until))
        db.commit()
        rows = db.execute(sa.select(_MSG).where(m.id.in_(ids), m.lease_owner == owner,
                                                m.state == "pending").order_by(m.id)).all()
    return [OutMessage(id=r.id, message_id=r.message_id, tenant=r.tenant, channel=r.channel,
                       recipient=r.recipient, type=r.type, severity=r.severity, subject=r.subject,
                       text=r.text, html=r.html, created_at=r.created_at,
                       notification_ids=list(r.notification_ids or []), secret_ref=r.secret_ref,
                       attempts=r.attempts) for r in rows]


_SENT_AT = _MSG.c.sent_at.type
_SENT = (sa.update(_MSG)
         .where(_MSG.c.id == sa.bindparam("mid"), _MSG.c.lease_owner == sa.bindparam("owner"),
                _MSG.c.state == "pending")
         .values(state="sent", sent_at=sa.bindparam("at"), attempts=_MSG.c.attempts + 1,
                 lease_owner=None, lease_until=None, error=None))


def mark_sent(db: Session, msg: OutMessage, owner: str, now: datetime | None = None) -> bool:
    """Record one message as sent, in its own commit (a prepared Core statement: this runs
    once per message, right after the server's 250)."""
    done = db.connection().execute(_SENT, {"mid": msg.id, "owner": owner, "at": now or utcnow()})
    db.commit()
    return getattr(done, "rowcount", 0) == 1


def backoff(attempts: int, settings: SenderSettings) -> float:
    """Exponential, with up to 20 % jitter so retries of many messages spread out."""
    delay = min(settings.backoff_max_s, settings.backoff_s * (2 ** max(0, attempts - 1)))
    return delay * (1 + random.random() * 0.2)


def mark_failed(db: Session, msg: OutMessage, owner: str, error: DeliveryError,
                settings: SenderSettings, now: datetime | None = None) -> str:
    """Record a failed attempt: ``pending`` again after a backoff, or ``dead``."""
    now = now or utcnow()
    attempts = msg.attempts + 1
    dead = error.permanent or attempts >= settings.max_attempts
    m = _MSG.c
    values: dict[str, Any] = {"attempts": attempts, "error": str(error)[:1000], "lease_owner": None,
                              "lease_until": None}
    if dead:
        values["state"] = "dead"
    else:
        values["next_attempt_at"] = now + timedelta(seconds=backoff(attempts, settings))
    db.execute(sa.update(_MSG).where(m.id == msg.id, m.lease_owner == owner, m.state == "pending")
               .values(**values))
    db.commit()
    return "dead" if dead else "retry"


def release(engine: Engine, owner: str) -> int:
    """Give back messages ``owner`` holds but did not try (a stop signal mid-batch)."""
    m = _MSG.c
    with Session(engine) as db:
        done = db.execute(sa.update(_MSG).where(m.lease_owner == owner, m.state == "pending")
                          .values(lease_owner=None, lease_until=None))
        db.commit()
    return getattr(done, "rowcount", 0) or 0


ChannelFactory = Callable[[str], Channel]


def deliver(engine: Engine, channel_for: ChannelFactory, settings: SenderSettings | None = None,
            owner: str | None = None, max_batches: int | None = None,
            should_stop: Callable[[], bool] = lambda: False,
            on_sent: Callable[[OutMessage], None] | None = None,
            channels: Iterable[str] | None = None) -> DeliverReport:
    """Deliver due messages batch by batch until none is due (or ``max_batches``)."""
    settings = settings or SenderSettings()
    owner = owner or f"sender-{uuid.uuid4().hex[:12]}"
    report = DeliverReport()
    opened: dict[str, Channel] = {}  # one connection per channel, reused batch after batch
    try:
        while not should_stop() and (max_batches is None or report.batches < max_batches):
            batch = claim(engine, owner, settings.batch_size, settings.lease_s, channels=channels)
            if not batch:
                break
            report.batches += 1
            by_channel: dict[str, list[OutMessage]] = defaultdict(list)
            for msg in batch:
                by_channel[msg.channel].append(msg)
            with Session(engine) as db:
                for name, msgs in by_channel.items():
                    _send_all(db, name, msgs, channel_for, opened, settings, owner, report,
                              should_stop, on_sent)
            release(engine, owner)
    finally:
        for channel in opened.values():
            report.connections += getattr(channel, "connections", 0)
            channel.close()
    return report


class _Recorder:
    """Records each sent message in its own commit on a raw DB-API connection with one
    prepared statement: this runs once per message, so it must cost tens of microseconds,
    not the ORM's milliseconds (bench/notifications_bench.py)."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self.engine = engine
        self.owner = owner
        self.raw: Any = None
        style = engine.dialect.paramstyle
        mark = "?" if style == "qmark" else "%s"
        self.sql = (f"UPDATE notification_message SET state = 'sent', sent_at = {mark}, "
                    f"attempts = attempts + 1, lease_owner = NULL, lease_until = NULL, error = NULL "
                    f"WHERE id = {mark} AND lease_owner = {mark} AND state = 'pending'")
        self.stamp = _SENT_AT.bind_processor(engine.dialect)  # the column type's own conversion

    def record(self, msg: OutMessage) -> bool:
        if self.raw is None:
            self.raw = self.engine.raw_connection()
        at = utcnow()
        value: Any = self.stamp(at) if self.stamp is not None else at
        cur = self.raw.cursor()
        try:
            cur.execute(self.sql, (value, msg.id, self.owner))
            count = cur.rowcount
        finally:
            cur.close()
        self.raw.commit()
        return count == 1

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None


def _send_all(db: Session, name: str, msgs: list[OutMessage], channel_for: ChannelFactory,
              opened: dict[str, Channel], settings: SenderSettings, owner: str,
              report: DeliverReport, should_stop: Callable[[], bool],
              on_sent: Callable[[OutMessage], None] | None) -> None:
    try:
        channel = opened.get(name) or channel_for(name)
        opened[name] = channel
    except Exception as exc:  # noqa: BLE001 - a channel that cannot even be set up fails its messages
        err = exc if isinstance(exc, DeliveryError) else DeliveryError(
            f"channel {name} unavailable: {type(exc).__name__}: {exc}"[:500])
        for msg in msgs:
            _failed(db, msg, owner, err, settings, report)
        return
    recorder = _Recorder(db.get_bind(), owner)  # type: ignore[arg-type]
    pending: list[OutMessage] = []  # sent (the server said 250), not yet recorded: at most one

    def record_pending() -> None:
        while pending:
            done = pending.pop()
            if not recorder.record(done):
                # our lease was taken over (we were too slow): the other sender owns it now
                log.warning("message %s was sent but its lease had passed to another sender",
                            done.id)
                continue
            report.sent += 1
            report.by_channel[name] = report.by_channel.get(name, 0) + 1
            report.add_row(done, "sent")
            if on_sent is not None:
                on_sent(done)

    try:
        for i, msg in enumerate(msgs):
            if should_stop():
                return
            try:
                # the previous message is recorded while the server answers this one's MAIL
                channel.send(msg, before_data=record_pending)
            except DeliveryError as err:
                record_pending()
                _failed(db, msg, owner, err, settings, report)
                if err.connection:  # the channel is down: the rest of the batch fails the same way
                    for rest in msgs[i + 1:]:
                        _failed(db, rest, owner, err, settings, report)
                    return
                continue
            pending.append(msg)
    finally:
        try:
            record_pending()
        finally:
            recorder.close()


def _failed(db: Session, msg: OutMessage, owner: str, err: DeliveryError, settings: SenderSettings,
            report: DeliverReport) -> None:
    outcome = mark_failed(db, msg, owner, err, settings)
    if outcome == "dead":
        report.dead += 1
        log.warning("message %s (%s to %s) is dead: %s", msg.id, msg.type, msg.recipient, err)
    else:
        report.retried += 1
    report.add_row(msg, outcome, str(err))


def pending_counts(engine: Engine) -> Mapping[str, int]:
    """Queued notifications and messages by state (what is left to do)."""
    with Session(engine) as db:
        out = {f"message_{s}": c for s, c in db.execute(
            sa.select(_MSG.c.state, sa.func.count()).group_by(_MSG.c.state)).all()}
        out["notification_queued"] = db.execute(sa.select(sa.func.count()).select_from(
            table_of(Notification)).where(table_of(Notification).c.state == "queued")).scalar_one()
    return out


def next_due(engine: Engine) -> datetime | None:
    """When the next pending message is due (None: nothing pending)."""
    with Session(engine) as db:
        return db.execute(sa.select(sa.func.min(_MSG.c.next_attempt_at))
                          .where(_MSG.c.state == "pending")).scalar_one_or_none()
