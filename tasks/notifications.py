"""Notification tasks: route queued notifications and deliver messages (the rules are in
``pamflow.notifications.sender``), the channels set up from the blocks, the run's table."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from sqlmodel import Session

from blocks.notification_routing import load_routes, load_smtp
from pamflow.notifications import sender
from pamflow.notifications.channels import (
    Channel,
    DeliveryError,
    SmtpChannel,
    SyslogChannel,
    WebhookChannel,
)
from pamflow.notifications.secrets import get_secret

TABLE_ROWS_MAX = 500


@dataclass
class SenderSummary:
    owner: str
    notifications: int = 0
    messages: int = 0
    grouped: int = 0
    digest_parts: int = 0
    digests: int = 0
    unrouted: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    connections: int = 0
    channels: list[str] = field(default_factory=list)
    left: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, plan: sender.PlanReport | None = None, sent: sender.DeliverReport | None = None) -> None:
        if plan is not None:
            self.notifications += plan.notifications
            self.messages += plan.messages
            self.grouped += plan.grouped
            self.digest_parts += plan.digest_parts
            self.unrouted += plan.unrouted
        if sent is not None:
            self.sent += sent.sent
            self.retried += sent.retried
            self.dead += sent.dead
            self.connections += sent.connections
            self.rows += sent.rows[: max(0, TABLE_ROWS_MAX - len(self.rows))]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("rows")
        return out


def _store():
    from pamflow.db import store

    return store()


def channel_factory(engine, smtp_block: str):
    """(factory, configured channel names): email only when the SMTP block exists."""
    smtp = load_smtp(smtp_block)
    password = None
    if smtp is not None and smtp.password_secret:
        with Session(engine) as db:
            password = get_secret(db, smtp.password_secret)

    def secret_of(name: str) -> str:
        with Session(engine) as db:
            return get_secret(db, name)

    def make(name: str) -> Channel:
        if name == "email":
            if smtp is None:
                raise DeliveryError(f"no SMTP server block {smtp_block!r}", connection=True)
            return SmtpChannel(smtp.to_settings(password))
        if name == "syslog":
            return SyslogChannel()
        if name == "webhook":
            return WebhookChannel(secret_of)
        raise DeliveryError(f"unknown channel {name!r}", permanent=True)

    names = ["syslog", "webhook"] + (["email"] if smtp is not None else [])
    domain = smtp.to_settings(None).domain if smtp is not None else "pamflow.local"
    return make, names, domain


@task(name="send-queued-notifications", cache_policy=NO_CACHE)
def send_queued_notifications(lifetime_s: float = 240.0, poll_s: float = 5.0, idle_s: float = 30.0,
                              batch_size: int = 500, max_attempts: int = 5, backoff_s: float = 30.0,
                              settle_s: float = 10.0, lease_s: float = 300.0,
                              smtp_block: str = "default", routing_block: str = "default",
                              digest: bool = False) -> SenderSummary:
    """Plan and deliver until nothing is left to do now (idle for ``idle_s``) or
    ``lifetime_s`` has passed. SIGTERM stops claiming; what was claimed and not tried is
    given back."""
    logger = get_run_logger()
    engine = _store()
    owner = f"email-sender-{uuid.uuid4().hex[:12]}"
    make, names, domain = channel_factory(engine, smtp_block)
    routes = load_routes(routing_block)
    if "email" not in names:
        logger.warning("no SMTP server block %r: e-mail messages wait until one exists", smtp_block)
    settings = sender.SenderSettings(batch_size=batch_size, max_attempts=max_attempts,
                                     backoff_s=backoff_s, settle_s=settle_s, lease_s=lease_s,
                                     message_domain=domain)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    summary = SenderSummary(owner=owner, channels=names)
    deadline = time.monotonic() + lifetime_s
    idle_since = time.monotonic()
    try:
        if digest:
            summary.digests = sender.plan_digest(engine, settings)
        while not stop.is_set() and time.monotonic() < deadline:
            planned = sender.plan(engine, routes, settings)
            sent = sender.deliver(engine, make, settings, owner=owner, should_stop=stop.is_set,
                                  channels=names)
            summary.add(planned, sent)
            if planned.notifications or sent.sent or sent.retried or sent.dead:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_s:
                break
            stop.wait(poll_s)
    finally:
        sender.release(engine, owner)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    summary.left = dict(sender.pending_counts(engine))
    logger.info("sent %d, retried %d, dead %d; %d notification(s) into %d message(s)",
                summary.sent, summary.retried, summary.dead, summary.notifications, summary.messages)
    return summary


def publish_sender_report(summary: SenderSummary, key: str = "email-sender") -> None:
    """A table artifact of the run: one row per message tried (no content, no secret)."""
    text = (f"{summary.notifications} notification(s) routed into {summary.messages} message(s) "
            f"({summary.grouped} grouped, {summary.digest_parts} for the digest, "
            f"{summary.unrouted} unrouted); sent {summary.sent}, retried {summary.retried}, "
            f"dead {summary.dead}; {summary.connections} connection(s)")
    if summary.rows:
        create_table_artifact(summary.rows[:TABLE_ROWS_MAX], key=key, description=text)
    else:
        create_markdown_artifact(f"**{text}**", key=key, description=text)


@task(name="mail-mfa-token", cache_policy=NO_CACHE)
def mail_mfa_token(username: str, tenant: str = "default", ttl_s: float = 600.0,
                   smtp_block: str = "default") -> dict[str, Any]:
    """Issue a one-time code for ``username`` and mail it at once (never queued, never
    returned: the result names the token, not the code)."""
    from pamflow.notifications.channels import SmtpChannel
    from pamflow.notifications.mfa import mail_token

    engine = _store()
    smtp = load_smtp(smtp_block)
    if smtp is None:
        raise RuntimeError(f"no SMTP server block {smtp_block!r}: the code cannot be mailed")
    password = None
    if smtp.password_secret:
        with Session(engine) as db:
            password = get_secret(db, smtp.password_secret)
    settings = smtp.to_settings(password)
    channel = SmtpChannel(settings)
    try:
        issued = mail_token(engine, channel, username, tenant, ttl_s, domain=settings.domain)
    finally:
        channel.close()
    return {"token_id": issued.token_id, "username": issued.username,
            "expires_at": issued.expires_at.isoformat(), "message_id": issued.message_id}
