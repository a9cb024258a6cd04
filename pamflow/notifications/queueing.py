"""Queueing a notification: a robot names a catalogue type and gives its variables.

A robot never sends mail itself: it queues a row in the same transaction as its cause;
the email sender robot routes and delivers it. Context values must never hold a secret:
:func:`queue` refuses keys that look like one (also inside nested objects).

After the transaction commits, one Prefect event ``pam.notification.queued`` tells the
email sender to start (best effort; its hourly schedule catches anything missed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ..errors import PamflowError
from ..models import Notification, SystemParameter
from ..models._base import utcnow
from .catalogue import CATALOGUE, NotificationType
from .templates import render

log = logging.getLogger(__name__)

SECRET_KEYS = ("password", "secret", "passwd", "token", "private_key", "passphrase", "api_key")
VOLATILE_KEYS = ("at", "checked_at", "timestamp", "time", "now")
CONTEXT_MAX_BYTES = 64 * 1024
DEFAULT_REPEAT_WINDOW_S = 3600.0
REPEAT_WINDOW_PARAM = "notifications.repeat_window_s"


class UnknownNotification(PamflowError, KeyError):
    pass


class NotificationContextError(PamflowError, ValueError):
    """The variables of a notification are refused (a secret, too big, not JSON)."""


MAX_DEPTH = 20


def _secret_keys(value: Any, path: str = "", depth: int = 0) -> list[str]:
    if depth > MAX_DEPTH:
        raise NotificationContextError(f"notification context is nested deeper than {MAX_DEPTH}")
    found: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            here = f"{path}.{k}" if path else str(k)
            if any(s in str(k).lower() for s in SECRET_KEYS):
                found.append(here)
            found += _secret_keys(v, here, depth + 1)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found += _secret_keys(v, f"{path}[{i}]", depth + 1)
    return found


def clean_context(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The context as plain JSON values; refused with the reason if it holds a secret-like
    key, is not JSON-able or is larger than 64 KiB."""
    context = dict(context or {})
    leaked = _secret_keys(context)
    if leaked:
        raise NotificationContextError(
            f"notification context must not carry secrets: {', '.join(leaked[:10])}")
    try:
        text = json.dumps(context, default=_jsonable, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise NotificationContextError(f"notification context is not JSON: {exc}") from None
    if len(text) > CONTEXT_MAX_BYTES:  # ASCII-escaped JSON: characters are bytes
        raise NotificationContextError(
            f"notification context is {len(text)} bytes, more than {CONTEXT_MAX_BYTES}")
    return _valid_text(json.loads(text))


def _valid_text(value: Any) -> Any:
    """Strings that are valid UTF-8 (a lone surrogate from a badly decoded input becomes
    U+FFFD) and without NUL, so every store and every channel can carry them."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON")


def dedup_key_of(kind: NotificationType, context: Mapping[str, Any], key: str | None) -> str:
    """What makes two notifications "the same event": the caller's ``key`` if given, else
    the context without its time stamps."""
    if key is None:
        stable = {k: v for k, v in context.items()
                  if k not in VOLATILE_KEYS and not str(k).endswith("_at")}
        key = json.dumps(stable, sort_keys=True, default=str)
    return hashlib.sha256(f"{kind.name}\x00{key}".encode()).hexdigest()[:64]


def repeat_window(db: Session) -> float:
    """Seconds within which the same event is counted, not sent again (system parameter
    ``notifications.repeat_window_s``, default one hour; 0 turns it off). Read once per session."""
    cached = db.info.get(REPEAT_WINDOW_PARAM)
    if cached is not None:
        return float(cached)
    value = DEFAULT_REPEAT_WINDOW_S
    row = db.get(SystemParameter, REPEAT_WINDOW_PARAM)
    if row is not None:
        try:
            value = max(0.0, float(row.value))
        except ValueError:
            log.warning("system parameter %s is not a number; using %s s", REPEAT_WINDOW_PARAM, value)
    db.info[REPEAT_WINDOW_PARAM] = value
    return value


def queue(
    db: Session,
    type_name: str,
    subject: str | Mapping[str, Any] | None = None,
    body: str | None = None,
    context: Mapping[str, Any] | None = None,
    recipients: Sequence[str] | None = None,
    *,
    tenant: str | None = None,
    key: str | None = None,
    now: datetime | None = None,
) -> Notification:
    """Queue a notification of ``type_name`` with its template variables ``context``.

    The new form is ``queue(db, type_name, context={...}, recipients=None, tenant=None,
    key=None)``: subject, text and HTML come from the type's templates. The old form
    ``queue(db, type_name, subject, body, context)`` is still accepted during the
    transition (its subject and body are used as given, the HTML is the escaped body).

    ``recipients``: addresses or ``user:NAME`` / ``group:NAME`` added to the routed ones
    (e.g. the requester of an approval). ``tenant``: default ``context["tenant"]`` or
    ``"default"``. ``key``: what identifies "the same event" for the repeat window
    (default: the context without time stamps); a repeat within the window increments
    ``repeats`` of the earlier row and returns it instead of queueing another.

    Adds to ``db``; the caller commits, so it is atomic with its cause.
    """
    kind = CATALOGUE.get(type_name)
    if kind is None:
        raise UnknownNotification(f"notification type {type_name!r} is not in the catalogue")
    if isinstance(subject, Mapping):  # queue(db, type, {...}) with the context positional
        if context is not None:
            raise TypeError("context given twice")
        subject, context = None, subject
    ctx = clean_context(context)
    if tenant is None:
        tenant = ctx["tenant"] if isinstance(ctx.get("tenant"), str) and ctx["tenant"] else "default"
    now = now or utcnow()
    dedup = dedup_key_of(kind, ctx, key)
    window = repeat_window(db)
    recent: dict[tuple[str, str, str], Notification] = db.info.setdefault(_RECENT, {})
    if window > 0:
        earlier = recent.get((tenant, kind.name, dedup))
        if earlier is not None and (earlier.created_at is None
                                    or earlier.created_at < now - timedelta(seconds=window)):
            earlier = None
        if earlier is None:
            with db.no_autoflush:  # rows queued in this transaction are in ``recent``
                earlier = db.exec(
                    select(Notification)
                    .where(col(Notification.tenant) == tenant, col(Notification.type) == kind.name,
                           col(Notification.dedup_key) == dedup,
                           col(Notification.created_at) >= now - timedelta(seconds=window))
                    .order_by(sa.desc(col(Notification.id))).limit(1)).first()
        if earlier is not None:
            earlier.repeats += 1
            earlier.last_seen_at = now
            db.add(earlier)
            return earlier
    if subject is not None or body is not None:  # the transition form: texts given by the caller
        from markupsafe import escape

        subject_text = _valid_text(" ".join(str(subject or kind.name).split())[:250])
        text = _valid_text(str(body or ""))
        html = f"<p>{escape(text)}</p>"
    else:
        rendered = render(kind, ctx, tenant)
        subject_text, text, html = rendered.subject, rendered.text, rendered.html
    row = Notification(
        type=kind.name,
        family=kind.family,
        tenant=tenant,
        severity=kind.severity,
        subject=subject_text,
        body=text,
        html=html,
        context=ctx,
        recipients=[str(r) for r in (recipients or [])],
        dedup_key=dedup,
        created_at=now,
    )
    db.add(row)
    recent[(tenant, kind.name, dedup)] = row
    _announce_after_commit(db)
    return row


_PENDING = "pamflow.notification.pending"
_RECENT = "pamflow.notification.recent"
_LISTENING = "pamflow.notification.listening"


def _after_commit(session: Any) -> None:
    session.info.pop(_RECENT, None)
    if session.info.pop(_PENDING, False):
        emit_queued()


def _after_rollback(session: Any, *_previous: Any) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_RECENT, None)


def _announce_after_commit(db: Session) -> None:
    """After the transaction commits, emit ``pam.notification.queued`` (once per commit)."""
    db.info[_PENDING] = True
    if not db.info.get(_LISTENING):
        db.info[_LISTENING] = True
        sa.event.listen(db, "after_commit", _after_commit)
        sa.event.listen(db, "after_soft_rollback", _after_rollback)


EMIT_EVERY_S = 20.0  # less than the sender's idle time: a run started by the last event sees it
_last_emit = 0.0


def emit_queued(force: bool = False) -> bool:
    """Best effort: tell Prefect that notifications were queued (no content, no secret).

    Skipped when no Prefect API is configured or ``PAMFLOW_EMIT_EVENTS=0``, and when this
    process emitted one less than ``EMIT_EVERY_S`` ago (the sender that event started is
    still running and polls the queue), so a busy robot does not start a run per commit.
    """
    global _last_emit
    if os.environ.get("PAMFLOW_EMIT_EVENTS", "1") == "0" or not os.environ.get("PREFECT_API_URL"):
        return False
    if not force and time.monotonic() - _last_emit < EMIT_EVERY_S:
        return False
    _last_emit = time.monotonic()
    from .. import events

    try:
        status = events.post_events([events.event(
            "pam.notification.queued",
            {"prefect.resource.id": "pam.notification.queue",
             "prefect.resource.name": "notification queue"}, {})], timeout=2.0)
    except Exception as exc:  # noqa: BLE001 - best effort: the sender's schedule catches up
        log.warning("could not emit pam.notification.queued: %s", type(exc).__name__)
        return False
    return status < 300
