"""The outbox: accepted calls are written here before the 202, then forwarded to Prefect.

* :class:`OutboxWriter` — one thread that inserts accepted calls in small group commits
  (every call waiting at that moment shares one transaction). The insert records the
  delivery id under a unique constraint ``(source, delivery_id)``; a conflict is a replay.
* :func:`claim` / :func:`mark_delivered` / :func:`release` — rows are claimed with a lease
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers), so several gateway
  processes never post the same row at the same time. A row is marked delivered only after
  Prefect answered 2xx. Should a gateway die between Prefect's 2xx and the mark, the row is
  posted again once its lease ends, with the same event id (Prefect's triggers skip an
  event id they have seen).
* :class:`Forwarder` — an asyncio task in the gateway, woken after each commit and every
  ``sweep_seconds``, that posts claimed rows to ``{PREFECT_API_URL}/events``.
* Dead rows: a row Prefect refuses (400, 413, 422: the event itself is wrong), that cannot
  be encoded as JSON, or that meets ``max_failures`` answers that may be its own fault (a
  5xx other than 502-504) gets ``dead_at`` and its last error and is never posted again
  until an operator re-queues it (``pamflow webhooks outbox --requeue``). Prefect being
  away, overloaded or refusing our credentials (no answer, 401, 403, 404, 408, 429,
  502-504...) is not the row's fault: those rows wait, however long it takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

from ..events import prefect_api_url, prefect_auth_headers
from ..models import WebhookDelivery, table_of, utcnow

log = logging.getLogger("pamflow.webhooks")
T = table_of(WebhookDelivery)
LEASE = timedelta(seconds=30)
RETENTION = timedelta(days=1)  # delivered rows kept (replay guard) well past the 5-minute window
MAX_FAILURES = int(os.environ.get("PAMFLOW_WEBHOOK_MAX_FAILURES", 20))
# Prefect's answers that say the event itself is wrong: retrying cannot help
REFUSED = frozenset({400, 413, 422})
# answers that say Prefect is away, overloaded, elsewhere or refusing our credentials
UNAVAILABLE = frozenset({401, 403, 404, 405, 407, 408, 421, 425, 429, 502, 503, 504})


@dataclass
class Accepted:
    """A call that passed every check, waiting to be written."""

    source: str
    delivery_id: str
    event: str
    payload: dict
    event_id: str = ""
    received_at: datetime | None = None

    def row(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "source": self.source, "delivery_id": self.delivery_id,
                "event": self.event, "payload": self.payload, "received_at": self.received_at,
                "attempts": 0, "failures": 0}


def _insert_ignore(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(T).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(T).on_conflict_do_nothing()


class _RawStatements:
    """The outbox's hot statements, compiled once and run on a raw DBAPI cursor.

    SQLAlchemy's per-execute overhead is several times SQLite's own cost for these tiny
    statements; values still go through the columns' own bind processors (JSON,
    UTC datetimes), so rows read back exactly as the ORM writes them.
    """

    INSERT_COLUMNS = ("event_id", "source", "delivery_id", "event", "payload", "received_at",
                      "lease_until", "attempts", "failures")

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.insert = self._compile(
            _insert_ignore(engine).values({c: sa.bindparam(c) for c in self.INSERT_COLUMNS}), dialect)
        self.mark = self._compile(
            T.update().where(T.c.event_id == sa.bindparam("id"))
            .values(delivered_at=sa.bindparam("now"), lease_until=sa.null(), last_error=sa.null()), dialect)
        self.release = self._compile(
            T.update().where(T.c.event_id == sa.bindparam("id"), T.c.delivered_at.is_(None))
            .values(lease_until=sa.null(), last_error=sa.bindparam("error")), dialect)
        self._procs = {c.name: c.type.bind_processor(dialect) for c in T.c}
        self._procs["now"] = self._procs["delivered_at"]

    @staticmethod
    def _compile(stmt, dialect) -> tuple[str, list[str] | None]:
        compiled = stmt.compile(dialect=dialect)
        return str(compiled), (list(compiled.positiontup) if compiled.positional else None)

    def params(self, stmt: tuple[str, list[str] | None], values: dict[str, Any]):
        procs = self._procs
        conv = {k: (proc(v) if (proc := procs.get(k)) else v) for k, v in values.items()}
        names = stmt[1]
        return tuple(conv[n] for n in names) if names is not None else conv


class OutboxWriter:
    """Writes accepted calls in group commits and resolves their futures.

    ``submit`` returns an asyncio future: True (written), False (delivery id seen before:
    a replay); it raises if the store failed (nothing was written for that call). Every
    call that arrived in the same event-loop turn shares one transaction.

    On SQLite the writes run on the event loop itself (a batch costs a few milliseconds,
    and handing them to a thread costs more in GIL hand-offs than it saves); on PostgreSQL
    they run in a writer thread (network round trips). A row is written already leased to
    this process and handed to ``on_commit`` (the forwarder) right after the commit, so
    the forwarder needs no query to find it; ``mark_delivered`` and ``release`` ride in
    the same group commits.
    """

    MAX_BATCH = 256

    def __init__(self, engine: Engine, on_commit=None, lease: timedelta = LEASE,
                 threaded: bool | None = None) -> None:
        self.engine = engine
        self.on_commit = on_commit
        self.lease = lease
        self.threaded = engine.dialect.name != "sqlite" if threaded is None else threaded
        self._sql = _RawStatements(engine)
        self._raw: PoolProxiedConnection | None = None
        self._ops: list = []
        self._scheduled = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.threaded:
            self._queue: queue.SimpleQueue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="webhook-outbox-writer", daemon=True)
            self._thread.start()

    # ---- the event loop's side ------------------------------------------------------------
    def submit(self, item: Accepted) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        item.event_id = str(uuid.uuid4())
        item.received_at = datetime.now(UTC)
        self._put(("insert", item, fut, loop), loop)
        return fut

    def mark_delivered(self, event_ids: list[str]) -> None:
        self._put(("mark", event_ids), None)

    def release(self, event_ids: list[str], error: str) -> None:
        self._put(("release", event_ids, error), None)

    def _put(self, op: tuple, loop: asyncio.AbstractEventLoop | None) -> None:
        if self.threaded:
            self._queue.put(op)
            return
        self._ops.append(op)
        if not self._scheduled:
            self._scheduled = True
            self._loop = loop or asyncio.get_running_loop()
            self._loop.call_soon(self._flush_inline)

    def _flush_inline(self) -> None:
        self._scheduled = False
        while self._ops:
            batch, self._ops = self._ops[:self.MAX_BATCH], self._ops[self.MAX_BATCH:]
            self._write(batch)

    def close(self) -> None:
        if self.threaded:
            self._queue.put(None)
            self._thread.join(10)
        else:
            self._flush_inline()
        if self._raw is not None:
            if not self.threaded:
                self._raw.cursor().execute("PRAGMA wal_autocheckpoint=1000")
            self._raw.close()
            self._raw = None

    # ---- the writer thread (PostgreSQL) -------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stop:
                return

    # ---- one group commit --------------------------------------------------------------
    def _write(self, batch: list) -> None:
        inserts = [op for op in batch if op[0] == "insert"]
        others = [op for op in batch if op[0] != "insert"]
        results: list[Any] = []
        sql = self._sql
        try:
            if self._raw is None:
                self._raw = self.engine.raw_connection()
                if not self.threaded:
                    # no checkpoint inside the loop's commits (it may fsync); the gateway
                    # checkpoints from a thread every second (checkpoint() below)
                    self._raw.cursor().execute("PRAGMA wal_autocheckpoint=0")
            cur = self._raw.cursor()
            try:
                for _kind, item, _fut, _loop in inserts:
                    row = item.row()
                    row["lease_until"] = item.received_at + self.lease
                    cur.execute(sql.insert[0], sql.params(sql.insert, row))
                    results.append(cur.rowcount == 1)
                now = utcnow()
                for op in others:
                    if op[0] == "mark":
                        cur.executemany(sql.mark[0], [sql.params(sql.mark, {"id": i, "now": now})
                                                      for i in op[1]])
                    else:
                        error = op[2][:500]
                        cur.executemany(sql.release[0], [sql.params(sql.release, {"id": i, "error": error})
                                                         for i in op[1]])
                self._raw.commit()
            finally:
                cur.close()
        except Exception as exc:  # noqa: BLE001 - every waiting call gets the failure
            log.error("outbox write failed (%d calls, %d updates): %s: %s", len(inserts), len(others),
                      exc.__class__.__name__, str(exc)[:200])  # a DBAPI error: no parameters
            results = [exc] * len(inserts)
            if self._raw is not None:
                try:
                    self._raw.rollback()
                    self._raw.close()
                except Exception:  # noqa: BLE001, S110 - the connection is discarded anyway
                    pass
                self._raw = None
        by_loop: dict[Any, list] = {}
        for (_kind, _item, fut, loop), result in zip(inserts, results, strict=True):
            by_loop.setdefault(loop, []).append((fut, result))
        for loop, pairs in by_loop.items():
            if self.threaded:
                loop.call_soon_threadsafe(_resolve, pairs)
            else:
                _resolve(pairs)
        written = [item for (_k, item, _f, _l), r in zip(inserts, results, strict=True) if r is True]
        if written and self.on_commit is not None:
            self.on_commit(written)


def _resolve(pairs: list) -> None:
    for fut, result in pairs:
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


# ---- claiming and marking (blocking; the forwarder runs them in a thread) --------------

def claim(engine: Engine, limit: int = 100, lease: timedelta = LEASE) -> list[dict]:
    """Lease up to ``limit`` undelivered rows whose lease is free, oldest first."""
    now = utcnow()
    pending = (sa.select(T.c.id)
               .where(T.c.delivered_at.is_(None), T.c.dead_at.is_(None),
                      sa.or_(T.c.lease_until.is_(None), T.c.lease_until < now))
               .order_by(T.c.id).limit(limit))
    if engine.dialect.name == "postgresql":
        pending = pending.with_for_update(skip_locked=True)
    stmt = (T.update().where(T.c.id.in_(pending.scalar_subquery()))
            .values(lease_until=now + lease, attempts=T.c.attempts + 1)
            .returning(T.c.id, T.c.event_id, T.c.source, T.c.delivery_id, T.c.event,
                       T.c.payload, T.c.received_at))
    with engine.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    rows.sort(key=lambda r: r["id"])
    return rows


def _mark_delivered(conn, event_ids: list[str]) -> None:
    conn.execute(T.update().where(T.c.event_id.in_(event_ids))
                 .values(delivered_at=utcnow(), lease_until=None, last_error=None))


def _release(conn, event_ids: list[str], error: str) -> None:
    conn.execute(T.update().where(T.c.event_id.in_(event_ids), T.c.delivered_at.is_(None))
                 .values(lease_until=None, last_error=error[:500]))


def mark_delivered(engine: Engine, event_ids: list[str]) -> None:
    """Prefect took these rows (2xx)."""
    with engine.begin() as conn:
        _mark_delivered(conn, event_ids)


def release(engine: Engine, event_ids: list[str], error: str) -> None:
    """Give the rows back (Prefect refused or was unreachable) with the reason."""
    with engine.begin() as conn:
        _release(conn, event_ids, error)


def fail(engine: Engine, event_ids: list[str], error: str, max_failures: int = MAX_FAILURES) -> int:
    """Prefect answered these rows with an error that may be their own fault: count it, give
    the rows back, and bury those that reached ``max_failures``. Returns how many died."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(T.update().where(T.c.event_id.in_(event_ids), T.c.delivered_at.is_(None))
                     .values(failures=T.c.failures + 1, lease_until=None, last_error=error[:500],
                             dead_at=sa.case((T.c.failures + 1 >= max_failures, now), else_=None)))
        return conn.execute(sa.select(sa.func.count()).select_from(T)
                            .where(T.c.event_id.in_(event_ids), T.c.dead_at.is_not(None))).scalar_one()


def bury(engine: Engine, event_ids: list[str], error: str) -> None:
    """These rows can never be forwarded as they are: mark them dead with the reason."""
    with engine.begin() as conn:
        conn.execute(T.update().where(T.c.event_id.in_(event_ids), T.c.delivered_at.is_(None))
                     .values(dead_at=utcnow(), lease_until=None, last_error=error[:500]))


def requeue(engine: Engine, event_ids: list[str] | None = None) -> int:
    """Give dead rows (all of them when ``event_ids`` is None) back to the forwarder."""
    stmt = T.update().where(T.c.dead_at.is_not(None), T.c.delivered_at.is_(None))
    if event_ids is not None:
        stmt = stmt.where(T.c.event_id.in_(event_ids))
    with engine.begin() as conn:
        return conn.execute(stmt.values(dead_at=None, failures=0, lease_until=None)).rowcount


def dead_rows(engine: Engine, limit: int = 100) -> list[dict]:
    """The newest dead rows, without their payloads."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(T.c.event_id, T.c.source, T.c.delivery_id, T.c.event,
                                      T.c.received_at, T.c.dead_at, T.c.attempts, T.c.failures,
                                      T.c.last_error)
                            .where(T.c.dead_at.is_not(None), T.c.delivered_at.is_(None))
                            .order_by(T.c.id.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]


def dead_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(T)
                            .where(T.c.delivered_at.is_(None), T.c.dead_at.is_not(None))).scalar_one()


def checkpoint(engine: Engine) -> None:
    """Fold SQLite's write-ahead log into the database without blocking writers (PASSIVE)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def pending_count(engine: Engine) -> int:
    """Rows waiting to be forwarded (dead rows are not counted: they wait for an operator)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(T)
                            .where(T.c.delivered_at.is_(None), T.c.dead_at.is_(None))).scalar_one()


def purge_delivered(engine: Engine, older_than: timedelta = RETENTION) -> int:
    """Delete delivered rows received before ``older_than`` ago (their ids can no longer
    be replayed: the timestamp window refuses them first)."""
    with engine.begin() as conn:
        return conn.execute(T.delete().where(T.c.delivered_at.is_not(None),
                                             T.c.received_at < utcnow() - older_than)).rowcount


def to_prefect_event(row: dict) -> dict:
    """The Prefect event for an outbox row (its id is the row's event id)."""
    received = row["received_at"]
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    source, delivery = row["source"], row["delivery_id"]
    return {
        "id": row["event_id"],
        "occurred": received.isoformat(),
        "event": row["event"],
        "resource": {
            "prefect.resource.id": f"pam.{source}.{delivery}",
            "prefect.resource.name": f"{source} delivery {delivery}",
            "pam.source": source,
            "pam.delivery": delivery,
        },
        "payload": row["payload"],
    }


class Forwarder:
    """Posts outbox rows to Prefect.

    Fresh rows arrive in memory from the writer (:meth:`hand_over`, already leased to this
    process) and are posted at once; a sweep every ``sweep_seconds`` claims rows left in
    the store (by a failed post, a crash, another gateway). When Prefect is unavailable
    the forwarder releases what it holds and backs off (0.5 s doubling to ``max_backoff``);
    the sweeps then retry until Prefect takes the events. When Prefect answers a batch with
    an error that may come from one of its events, the batch is posted again one event at
    a time, so one bad row neither holds back nor takes down the others.
    """

    BATCH = 100

    def __init__(self, engine: Engine, api_url: str | None = None, sweep_seconds: float = 2.0,
                 max_backoff: float = 5.0, max_failures: int = MAX_FAILURES) -> None:
        self.engine = engine
        self.api_url = (api_url or prefect_api_url()).rstrip("/")
        self.sweep_seconds = sweep_seconds
        self.max_backoff = max_backoff
        self.max_failures = max_failures
        self.writer: OutboxWriter | None = None
        self.forwarded = 0
        self.dead = 0
        self.last_error: str | None = None
        self._fresh: list[dict] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None
        self._last_purge = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0),
                                         headers=prefect_auth_headers())
        self._task = asyncio.create_task(self._run(), name="webhook-forwarder")

    def hand_over(self, items: list[Accepted]) -> None:
        """Thread-safe (the writer calls it after each commit): forward these rows now."""
        rows = [{"event_id": i.event_id, "source": i.source, "delivery_id": i.delivery_id,
                 "event": i.event, "payload": i.payload, "received_at": i.received_at} for i in items]
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._add_fresh, rows)

    def _add_fresh(self, rows: list[dict]) -> None:
        self._fresh.extend(rows)
        self._wake.set()

    def wake(self) -> None:
        """Thread-safe: sweep the store now."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        backoff = 0.0
        next_sweep = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(),
                                           timeout=max(0.0, next_sweep - time.monotonic()))
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                ok = await self._forward_fresh()
                if ok and time.monotonic() >= next_sweep:
                    ok = await self.forward_pending()
                    next_sweep = time.monotonic() + self.sweep_seconds
                backoff = 0.0 if ok else min(self.max_backoff, max(0.5, backoff * 2))
                if ok and time.monotonic() - self._last_purge > 600:
                    self._last_purge = time.monotonic()
                    await asyncio.to_thread(purge_delivered, self.engine)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store hiccuped; retry after a pause
                log.warning("outbox forwarder: %s", exc.__class__.__name__)
                backoff = min(self.max_backoff, max(0.5, backoff * 2))
            if backoff:
                next_sweep = 0.0  # after the pause, retry from the store

    async def _forward_fresh(self) -> bool:
        while self._fresh:
            rows, self._fresh = self._fresh[:self.BATCH], self._fresh[self.BATCH:]
            if not await self._deliver(rows, via_writer=True):
                held, self._fresh = self._fresh, []
                if held:
                    self._give_back([r["event_id"] for r in held])
                return False
        return True

    def _give_back(self, event_ids: list[str]) -> None:
        if self.writer is not None:
            self.writer.release(event_ids, self.last_error or "not forwarded")
        else:
            release(self.engine, event_ids, self.last_error or "not forwarded")

    async def forward_pending(self) -> bool:
        """Forward every row the store holds unleased; False if Prefect was unavailable."""
        while True:
            rows = await asyncio.to_thread(claim, self.engine, self.BATCH)
            if not rows:
                return True
            if not await self._deliver(rows, via_writer=False):
                return False

    async def _deliver(self, rows: list[dict], via_writer: bool) -> bool:
        """Post ``rows`` and settle each of them: delivered, given back, counted or dead.

        False when Prefect was unavailable (the unsettled rows are given back).
        """
        bodies: list[tuple[dict, bytes]] = []
        unencodable: list[str] = []
        for r in rows:
            try:
                bodies.append((r, encode_event(r)))
            except (TypeError, ValueError) as exc:  # NaN, unpaired surrogates... from older rows
                unencodable.append(r["event_id"])
                log.warning("outbox row %s (%s) cannot be encoded as JSON (%s); marked dead",
                            r["event_id"], r["event"], exc.__class__.__name__)
        if unencodable:
            await self._bury(unencodable, "cannot be encoded as JSON")
        if not bodies:
            return True
        status, error = await self._post([b for _, b in bodies])
        if status == "ok":
            await self._delivered([r for r, _ in bodies], via_writer)
            return True
        if status == "unavailable" or len(bodies) == 1:
            return await self._settle(bodies, status, error, via_writer)
        # one of the events may be at fault: post them one at a time
        log.warning("Prefect refused a batch of %d events (%s); posting them one at a time",
                    len(bodies), error)
        for i, (r, body) in enumerate(bodies):
            status, error = await self._post([body])
            if status == "ok":
                await self._delivered([r], via_writer)
                continue
            if not await self._settle([(r, body)], status, error, via_writer):
                rest = [x["event_id"] for x, _ in bodies[i + 1:]]
                if rest:
                    await self._release(rest, via_writer)
                return False
        return True

    async def _settle(self, bodies: list[tuple[dict, bytes]], status: str, error: str,
                      via_writer: bool) -> bool:
        ids = [r["event_id"] for r, _ in bodies]
        if error != self.last_error:
            log.warning("Prefect did not take %d events (%s)", len(ids), error)
        self.last_error = error
        if status == "unavailable":
            await self._release(ids, via_writer)
            return False
        if status == "refused":
            for r, _ in bodies:
                log.warning("outbox row %s (%s, delivery %s) refused by Prefect (%s); marked dead",
                            r["event_id"], r["event"], r["delivery_id"], error)
            await self._bury(ids, error)
            return True
        died = await asyncio.to_thread(fail, self.engine, ids, error, self.max_failures)
        if died:
            self.dead += died
            log.warning("%d outbox row(s) failed %d times (%s); marked dead", died,
                        self.max_failures, error)
        return True

    async def _delivered(self, rows: list[dict], via_writer: bool) -> None:
        ids = [r["event_id"] for r in rows]
        if via_writer and self.writer is not None:
            self.writer.mark_delivered(ids)
        else:
            await asyncio.to_thread(mark_delivered, self.engine, ids)
        self.forwarded += len(rows)
        if self.last_error:
            log.info("Prefect takes events again")
        self.last_error = None

    async def _release(self, event_ids: list[str], via_writer: bool) -> None:
        if via_writer and self.writer is not None:
            self.writer.release(event_ids, self.last_error or "not forwarded")
        else:
            await asyncio.to_thread(release, self.engine, event_ids, self.last_error or "not forwarded")

    async def _bury(self, event_ids: list[str], error: str) -> None:
        await asyncio.to_thread(bury, self.engine, event_ids, error)
        self.dead += len(event_ids)

    async def _post(self, bodies: list[bytes]) -> tuple[str, str]:
        """("ok" | "refused" | "failed" | "unavailable", the error; "" when ok) for one post."""
        client = self._client
        if client is None:
            return "unavailable", "the forwarder was not started: nothing posted"
        try:
            resp = await client.post(f"{self.api_url}/events", content=b"[" + b",".join(bodies) + b"]",
                                           headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return "unavailable", f"{self.api_url} unreachable: {exc.__class__.__name__}"
        code = resp.status_code
        if 200 <= code < 300:
            return "ok", ""
        error = f"{self.api_url}/events answered {code}{_detail(resp)}"
        if code in REFUSED:
            return "refused", error
        if code in UNAVAILABLE or code < 400:
            return "unavailable", error
        return "failed", error


def encode_event(row: dict) -> bytes:
    """The row's Prefect event as strict JSON (UTF-8, no NaN); raises if it cannot be."""
    return json.dumps(to_prefect_event(row), allow_nan=False, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _detail(resp: httpx.Response) -> str:
    """Where and why Prefect's validation refused an event (never the event's values)."""
    try:
        details = resp.json().get("exception_detail") or []
        first = details[0]
        where = ".".join(str(p) for p in first.get("loc", []))[:100]
        return f": {where}: {str(first.get('msg', ''))[:150]}"
    except Exception:  # noqa: BLE001 - not Prefect's validation answer: the code says enough
        return ""
