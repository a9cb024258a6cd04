"""The gateway's ASGI application (a plain ASGI callable: the hot path stays short).

``POST /hooks/{source}``: checks in this order, each refusal answered with
``{"error": "<short reason>"}`` and nothing written or emitted:

1. ``Content-Type`` not ``application/json`` -> 415
2. ``Content-Length`` not a number -> 400; over the limit (or the body read so far) -> 413,
   body not read further
3. a signing header missing -> 401; the signature not ``sha256=...`` -> 401; the timestamp
   (ASCII digits only), delivery id or event malformed -> 400 ``malformed <header>``
4. ``X-Pamflow-Timestamp`` more than 300 s from now -> 401 ``stale timestamp``
5. unknown source or a wrong signature -> 401 ``invalid signature`` (the same answer for
   both, so callers cannot learn which sources exist)
6. body not strict UTF-8 JSON -> 400 with the reason (see ``schemas.parse_body``: not
   UTF-8, malformed, nested too deep, NaN, numbers out of range, duplicate keys, unpaired
   surrogates); not fitting its event's schema -> 422
7. delivery id seen before for this source (also before a restart) -> 409 ``replay``

Then the payload's ``tenant`` is set to the source's tenant (whatever the caller sent),
the call is written to the outbox and answered 202 ``{"event_id": ..., "event": ...}``.
Checks 1-4 come before the source is looked up, so they say nothing about which sources
exist either. ``GET /health`` answers 200 with the outbox's pending and dead counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time

from sqlalchemy.engine import Engine

from ..errors import PamflowError
from .outbox import (
    MAX_FAILURES,
    Accepted,
    Forwarder,
    OutboxWriter,
    checkpoint,
    dead_count,
    pending_count,
    release,
)
from .schemas import BodyError, PayloadError, parse_body, validate_payload
from .signing import (
    DELIVERY_HEADER,
    DELIVERY_RE,
    EVENT_HEADER,
    EVENT_RE,
    SIGNATURE_PREFIX,
    TIMESTAMP_HEADER,
    signature_matches,
    signing_bytes,
)
from .sources import SecretCache

log = logging.getLogger("pamflow.webhooks")

MAX_BODY = int(os.environ.get("PAMFLOW_WEBHOOK_MAX_BODY", 64 * 1024))
TOLERANCE = int(os.environ.get("PAMFLOW_WEBHOOK_TOLERANCE", 300))
PREFIX = "/hooks/"
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")  # not \d: str patterns match every Unicode digit
JSON_HEADERS = [(b"content-type", b"application/json")]


def _body(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Refused(PamflowError):
    """A call the gateway answers with ``status`` and ``reason`` instead of accepting it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Gateway:
    """The webhook gateway. Call it as an ASGI app; it starts its writer and forwarder on
    ASGI lifespan startup (or the first request, for servers/tests without lifespan)."""

    def __init__(self, engine: Engine | None = None, api_url: str | None = None,
                 max_body: int = MAX_BODY, tolerance: int = TOLERANCE,
                 sweep_seconds: float = 2.0, refresh_seconds: float = 1.0,
                 max_failures: int = MAX_FAILURES) -> None:
        self._engine = engine
        self.max_failures = max_failures
        self.api_url = api_url
        self.max_body = max_body
        self.tolerance = tolerance
        self.sweep_seconds = sweep_seconds
        self.refresh_seconds = refresh_seconds
        self.started = False
        self.counts = {"accepted": 0, "refused": 0}
        self.writer: OutboxWriter | None = None
        self.forwarder: Forwarder | None = None
        self.secrets: SecretCache | None = None
        self._refresher: asyncio.Task | None = None
        self._start_lock: asyncio.Lock | None = None
        self._miss_lock: asyncio.Lock | None = None

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self.started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.started:
                return
            if self._engine is None:
                from .. import db

                self._engine = await asyncio.to_thread(db.store)
            engine = self._engine
            self.secrets = SecretCache(engine)
            await asyncio.to_thread(self.secrets.refresh)
            self.forwarder = Forwarder(engine, self.api_url, sweep_seconds=self.sweep_seconds,
                                       max_failures=self.max_failures)
            self.forwarder.start()
            self.writer = OutboxWriter(engine, on_commit=self.forwarder.hand_over)
            self.forwarder.writer = self.writer
            self._refresher = asyncio.create_task(self._refresh_loop(engine, self.secrets),
                                                  name="webhook-secrets")
            self.started = True
            self.forwarder.wake()  # deliver what an earlier run left in the outbox
            log.info("webhook gateway started; sources: %s; forwarding to %s",
                     ", ".join(self.secrets.names) or "(none)", self.forwarder.api_url)

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.forwarder is not None:
            await self.forwarder.stop()
            # rows handed over but not posted stay leased; give them back for the next sweep
            self.forwarder.writer = None
            if self.forwarder._fresh:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(release, self.forwarder.engine,
                                            [r["event_id"] for r in self.forwarder._fresh],
                                            "gateway stopped")
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)

    async def _refresh_loop(self, engine: Engine, secrets: SecretCache) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await asyncio.to_thread(secrets.refresh)
                await asyncio.to_thread(checkpoint, engine)
            except Exception as exc:  # noqa: BLE001 - keep the cached secrets, retry
                log.warning("could not refresh webhook sources: %s", exc.__class__.__name__)

    async def health(self) -> dict:
        """Counters of this process and the store's counts of waiting and dead outbox rows."""
        fw = self.forwarder
        pending: int | None = None
        dead: int | None = None
        if self._engine is not None:  # None until the gateway started: nothing to count yet
            try:
                pending = await asyncio.to_thread(pending_count, self._engine)
                dead = await asyncio.to_thread(dead_count, self._engine)
            except Exception:  # noqa: BLE001 - health reports, it does not fail
                pending = dead = None
        return {"status": "ok", "outbox_pending": pending, "outbox_dead": dead,
                "forwarded": fw.forwarded if fw else 0,
                "prefect_error": fw.last_error if fw else None, **self.counts}

    # ---- ASGI ----------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self.started:
                await self.start()
            path = scope["path"]
            if path.startswith(PREFIX) and scope["method"] == "POST":
                await self._hook(scope, receive, send, path[len(PREFIX):])
            elif path == "/health" and scope["method"] in ("GET", "HEAD"):
                await _answer(send, 200, await self.health())
            else:
                await _answer(send, 404, {"error": "not found"})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _hook(self, scope, receive, send, source: str) -> None:
        try:
            status, answer = await self._accept(scope, receive, source)
        except Refused as refusal:
            self.counts["refused"] += 1
            log.info("refused webhook for source %r: %s %s", source[:64], refusal.status, refusal.reason)
            await _answer(send, refusal.status, {"error": refusal.reason})
            return
        self.counts["accepted"] += 1
        await _answer(send, status, answer)

    async def _accept(self, scope, receive, source: str) -> tuple[int, dict]:
        headers = {}
        for k, v in scope["headers"]:
            headers[k] = v
        ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if ctype != b"application/json":
            raise Refused(415, "content type must be application/json")
        length = headers.get(b"content-length")
        if length is not None:
            if not (length.isdigit() and len(length) <= 18):  # bytes.isdigit: ASCII only
                raise Refused(400, "bad content-length")
            if int(length) > self.max_body:
                raise Refused(413, f"body larger than {self.max_body} bytes")
        try:
            raw = [headers[b"x-pamflow-timestamp"], headers[b"x-pamflow-delivery"],
                   headers[b"x-pamflow-event"], headers[b"x-pamflow-signature"]]
        except KeyError:
            raise Refused(401, "missing signature headers") from None
        timestamp = _header(raw[0], TIMESTAMP_RE, TIMESTAMP_HEADER)
        delivery = _header(raw[1], DELIVERY_RE, DELIVERY_HEADER)
        event = _header(raw[2], EVENT_RE, EVENT_HEADER)
        signature = raw[3].decode("ascii", "replace")
        if not signature.startswith(SIGNATURE_PREFIX):
            raise Refused(401, "malformed signature headers")
        if abs(time.time() - int(timestamp)) > self.tolerance:
            raise Refused(401, "stale timestamp")

        body = await self._read_body(receive)

        secrets, writer = self.secrets, self.writer
        if secrets is None or writer is None:  # stopped meanwhile, or never started
            raise Refused(503, "gateway not running, retry later")
        known, keys = secrets.candidates(source)
        message = signing_bytes(timestamp, delivery, event, body)
        if not signature_matches(keys, message, signature):
            # a rotated or new secret may not be cached yet: re-read once, then decide
            await self._refresh_after_miss(secrets)
            known, keys = secrets.candidates(source)
            if not (known and signature_matches(keys, message, signature)):
                raise Refused(401, "invalid signature")

        try:
            payload = parse_body(body)
        except BodyError as exc:
            raise Refused(400, str(exc)) from None
        name = f"pam.{source}.{event}"
        try:
            validate_payload(name, payload)
        except PayloadError as exc:
            raise Refused(422, str(exc)) from None
        payload["tenant"] = secrets.tenant(source)  # the source's, never the caller's

        item = Accepted(source=source, delivery_id=delivery, event=name, payload=payload)
        try:
            written = await writer.submit(item)
        except Exception:  # noqa: BLE001 - the store is down: the sender retries later
            raise Refused(503, "store unavailable, retry later") from None
        if not written:
            raise Refused(409, "replay: delivery id already seen")
        return 202, {"event_id": item.event_id, "event": name}

    async def _refresh_after_miss(self, secrets: SecretCache) -> None:
        """Re-read the sources after a miss; misses share one re-read per ``min_interval``
        (a flood of bad calls costs one small query every half second, and waits for it)."""
        if self._miss_lock is None:
            self._miss_lock = asyncio.Lock()
        asked = time.monotonic()
        async with self._miss_lock:
            if secrets.last_refresh >= asked:
                return  # another miss re-read the sources while this one waited
            wait = secrets.min_interval - (time.monotonic() - secrets.last_refresh)
            if wait > 0:
                await asyncio.sleep(wait)
            await asyncio.to_thread(secrets.refresh)

    async def _read_body(self, receive) -> bytes:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise Refused(413, f"body larger than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _header(raw: bytes, pattern: re.Pattern, name: str) -> str:
    """A signing header's value: ASCII and matching ``pattern``, else 400 naming the header."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, f"malformed {name}") from None
    if not pattern.fullmatch(text):
        raise Refused(400, f"malformed {name}")
    return text


async def _answer(send, status: int, obj: dict) -> None:
    body = _body(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app() -> Gateway:
    """The gateway for the configured store and ``PREFECT_API_URL`` (uvicorn ``--factory``)."""
    return Gateway()
