"""The operation executor: claim batches from the queue and run them, until empty or forever.

``drain`` claims and runs batches until the queue has nothing runnable (the benchmark and
the robots call it); ``serve`` is one long-lived service instance (DESIGN.md "Service
robots"): it polls the queue every ``poll_s`` seconds for ``lifetime_s`` seconds, then
returns so the schedule starts a fresh instance running the newest code.

While a batch runs, a heartbeat thread renews the batch's leases; if the process dies the
leases expire and another executor (or ``rotation.recover``) reclaims the operations,
which resume from their recorded step.

Handlers per operation kind live in ``HANDLERS`` (``pamflow.rotation`` supplies change,
activate, verify and reconcile); ``register_handler`` adds others (certificate and
discovery modules, or a test's recording handler). An executor claims only the kinds it
has handlers for, so executors of different modules share one queue.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from . import queue as opqueue
from . import rotation
from .models import Operation, OperationState

log = logging.getLogger(__name__)

Handler = Callable[[rotation.Context, Sequence[Operation]], None]
HANDLERS: dict[str, Handler] = dict(rotation.HANDLERS)


def register_handler(kind: str, handler: Handler) -> None:
    """Run operations of ``kind`` with ``handler(ctx, ops)``; it must close each operation."""
    HANDLERS[kind] = handler


def new_owner(prefix: str = "executor") -> str:
    """A lease owner name unique to this process and call."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Heartbeat(threading.Thread):
    """Renews the leases of the batch in flight every third of the lease."""

    def __init__(self, engine: Engine, ids: list[int], owner: str, lease_s: float) -> None:
        super().__init__(name="pamflow-lease-heartbeat", daemon=True)
        self.engine, self.ids, self.owner, self.lease_s = engine, ids, owner, lease_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(max(0.5, self.lease_s / 3)):
            try:
                held = opqueue.renew(self.engine, self.ids, self.owner, self.lease_s)
                self.ids = [i for i in self.ids if i in held]
            except Exception as exc:  # noqa: BLE001 - the store may be briefly away
                log.warning("lease renewal failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


def run_batch(ctx: rotation.Context, ops: Sequence[Operation], lease_s: float) -> Counter:
    """Run one claimed batch with its handlers; returns outcome counts by final state."""
    heartbeat = _Heartbeat(ctx.engine, [op.id for op in ops], ctx.owner or "", lease_s)
    heartbeat.start()
    try:
        by_kind: dict[str, list[Operation]] = {}
        for op in ops:
            by_kind.setdefault(op.kind, []).append(op)
        for kind, group in by_kind.items():
            handler = HANDLERS.get(kind)
            try:
                if handler is None:
                    raise LookupError(f"no handler for {kind} operations in this executor")
                handler(ctx, group)
            except Exception as exc:  # noqa: BLE001 - never let one batch kill the service
                log.exception("handler for %d %s operation(s) failed: %s", len(group), kind,
                              type(exc).__name__)
                _fail_leftovers(ctx, group, f"{kind} handler error: {type(exc).__name__}")
        _fail_leftovers(ctx, ops, "the executor left the operation unfinished")
    finally:
        heartbeat.stop()
    return _outcomes(ctx.engine, [op.id for op in ops])


def _fail_leftovers(ctx: rotation.Context, ops: Sequence[Operation], why: str) -> None:
    """Operations still running under our lease after their handler: fail them, retryable.

    Their credential keeps any pending secret and is settled by reconciliation.
    """
    try:
        with Session(ctx.engine, expire_on_commit=False) as db:
            rows = opqueue.held_many(db, [op.id for op in ops], ctx.owner)
            for row in rows.values():
                opqueue.mark_failed(db, row, f"{why} (step {row.step or 'claim'})",
                                    retryable=True)
            left = len(rows)
            if left:
                db.commit()
        if left:
            log.warning("%d operation(s) left unfinished: %s", left, why)
    except Exception as exc:  # noqa: BLE001 - store away: leases expire, recovery reclaims
        log.error("could not close unfinished operations (%s); their leases will expire",
                  type(exc).__name__)


def _outcomes(engine: Engine, ids: list[int]) -> Counter:
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(Operation.state, sa.func.count())
                                .where(Operation.id.in_(ids)).group_by(Operation.state)).all()
        return Counter({state: n for state, n in rows})
    except Exception:  # noqa: BLE001
        return Counter({"unknown": len(ids)})


def drain(engine: Engine | None = None, *, owner: str | None = None, batch_size: int = 100,
          workers: int = 16, stop_when_empty: bool = True, kinds: Sequence[str] | None = None,
          lease_s: float = opqueue.DEFAULT_LEASE_SECONDS, max_batches: int | None = None,
          on_batch: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, poll_s: float = 1.0,
          pipeline: int = 2) -> dict:
    """Claim and run operations until the queue has nothing runnable; return counts.

    ``{"owner", "batches", "claimed", "succeeded", "failed", "other"}``. With
    ``stop_when_empty=False`` it keeps polling every ``poll_s`` until ``should_stop()``.
    ``on_batch(summary_so_far)`` is called after each batch (progress artifacts).

    ``pipeline`` batches are in flight at once (each its own claim loop under the same
    owner), so one batch's verification overlaps the next one's ``chpasswd``: the target
    hashes passwords in one process per ``chpasswd`` and the verifying logins use the
    other cores.
    """
    from .db import store

    engine = engine or store()
    owner = owner or new_owner()
    kinds = list(kinds or HANDLERS)
    ctx = rotation.Context(engine=engine, owner=owner, workers=workers)
    totals: Counter = Counter()
    lock = threading.Lock()
    batches = [0]

    def done() -> bool:
        with lock:
            return max_batches is not None and batches[0] >= max_batches

    def loop() -> None:
        while not done():
            if should_stop is not None and should_stop():
                return
            ops = opqueue.claim(engine, owner, batch_size, lease_s=lease_s, kinds=kinds)
            if not ops:
                if stop_when_empty:
                    return
                time.sleep(poll_s)
                continue
            outcome = run_batch(ctx, ops, lease_s)
            with lock:
                batches[0] += 1
                totals["claimed"] += len(ops)
                totals.update(outcome)
                summary = _summary(owner, batches[0], totals)
            log.info("%s: batch %d: %d operation(s): %s", owner, summary["batches"], len(ops),
                     dict(outcome))
            if on_batch is not None:
                on_batch(summary)

    if pipeline <= 1:
        loop()
    else:
        threads = [threading.Thread(target=loop, name=f"pamflow-drain-{i}", daemon=True)
                   for i in range(pipeline)]
        for t in threads:
            t.start()
            time.sleep(0.05)  # stagger: the second claim finds the first batch running
        for t in threads:
            t.join()
    return _summary(owner, batches[0], totals)


def _summary(owner: str, batches: int, totals: Counter) -> dict:
    return {"owner": owner, "batches": batches, "claimed": totals["claimed"],
            "succeeded": totals[OperationState.succeeded], "failed": totals[OperationState.failed],
            "other": sum(n for k, n in totals.items()
                         if k not in ("claimed", OperationState.succeeded, OperationState.failed))}


def serve(lifetime_s: float = 3600.0, poll_s: float = 1.0, engine: Engine | None = None, *,
          owner: str | None = None, batch_size: int = 100, workers: int = 16,
          kinds: Sequence[str] | None = None, lease_s: float = opqueue.DEFAULT_LEASE_SECONDS,
          on_batch: Callable[[dict], None] | None = None,
          on_idle: Callable[[], None] | None = None,
          stop: threading.Event | None = None) -> dict:
    """One long-lived executor instance: poll every ``poll_s`` for ``lifetime_s`` seconds.

    Stops early (between batches) when ``stop`` is set, and on SIGTERM/SIGINT when run in
    the main thread. ``on_idle`` is called after each empty poll.
    """
    from .db import store
    from .vault import vault

    engine = engine or store()
    vault()  # a store sealed with another key stops this instance now, not at its first batch
    owner = owner or new_owner("executor-service")
    deadline = time.monotonic() + lifetime_s
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    totals: Counter = Counter()
    polls = 0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            polls += 1
            if opqueue.runnable_count(engine, kinds or list(HANDLERS)):
                done = drain(engine, owner=owner, batch_size=batch_size, workers=workers,
                             kinds=kinds, lease_s=lease_s, on_batch=on_batch,
                             should_stop=lambda: stop.is_set() or time.monotonic() >= deadline)
                totals.update({k: v for k, v in done.items() if isinstance(v, int)})
                continue
            if on_idle is not None:
                on_idle()
            stop.wait(min(poll_s, max(0.0, deadline - time.monotonic())))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"owner": owner, "polls": polls, **{k: totals[k] for k in
                                               ("batches", "claimed", "succeeded", "failed",
                                                "other")}}


def _main(argv: list[str]) -> int:
    """``python -m pamflow.executor [drain|serve SECONDS]`` (tests, operators)."""
    logging.basicConfig(level=os.environ.get("PAMFLOW_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lease = float(os.environ.get("PAMFLOW_LEASE_SECONDS") or opqueue.DEFAULT_LEASE_SECONDS)
    batch = int(os.environ.get("PAMFLOW_BATCH_SIZE") or 100)
    if argv[:1] == ["serve"]:
        lifetime = float(argv[1]) if len(argv) > 1 else 3600.0
        print(serve(lifetime, lease_s=lease, batch_size=batch))
        return 0
    print(drain(lease_s=lease, batch_size=batch))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(_main(sys.argv[1:]))

__all__ = ["HANDLERS", "drain", "new_owner", "register_handler", "run_batch", "serve"]
