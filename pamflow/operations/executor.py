"""The operation executor: claim batches from the queue and run them, until empty or forever.

``drain`` claims and runs batches until the queue has nothing runnable (the benchmark and
the robots call it); ``serve`` is one long-lived service instance (each simultaneous
instance of the executor robot is one flow run that claims work as it arrives): it polls
the queue every ``poll_s`` seconds for ``lifetime_s`` seconds, then returns so the
schedule starts a fresh instance running the newest code.

While a batch runs, a heartbeat thread renews the batch's leases; if the process dies the
leases expire and another executor (or ``recover``) reclaims the operations,
which resume from their recorded step.

Handlers per operation kind live in ``HANDLERS`` (``pamflow.credentials`` supplies change,
activate, verify and reconcile); ``register_handler`` adds others (certificate and
discovery modules, or a test's recording handler). An executor claims only the kinds it
has handlers for, so executors of different modules share one queue.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from .. import credentials
from ..credentials.work import PolicySource
from ..models import Operation, OperationState, row_id
from . import queue as opqueue

log = logging.getLogger(__name__)

Handler = Callable[[credentials.Context, Sequence[Operation]], None]
HANDLERS: dict[str, Handler] = dict(credentials.HANDLERS)


def register_handler(kind: str, handler: Handler) -> None:
    """Run operations of ``kind`` with ``handler(ctx, ops)``; it must close each operation."""
    HANDLERS[kind] = handler


def new_owner(prefix: str = "executor") -> str:
    """A lease owner name unique to this process and call."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Heartbeat(threading.Thread):
    """Renews the leases of the batch in flight every third of the lease.

    An operation whose lease could not be renewed (re-claimed, released by recovery) is
    added to ``lost``, and so is the whole batch when the store has not confirmed a renewal
    for half a lease: the protocol then stops acting on those operations (their fenced
    writes would be refused anyway, but a target must not be touched on a lost lease).
    """

    def __init__(self, engine: Engine, ops: Sequence[Operation], owner: str, lease_s: float,
                 lost: set[int]) -> None:
        super().__init__(name="pamflow-lease-heartbeat", daemon=True)
        self.engine, self.owner, self.lease_s, self.lost = engine, owner, lease_s, lost
        self.epochs = {row_id(op): op.lease_epoch for op in ops}
        self.ids = list(self.epochs)
        self.stopped = threading.Event()

    def run(self) -> None:
        confirmed = time.monotonic()
        while not self.stopped.wait(max(0.5, self.lease_s / 3)):
            try:
                held = opqueue.renew(self.engine, self.ids, self.owner, self.lease_s, self.epochs)
                gone = [i for i in self.ids if i not in held]
                if gone:
                    log.warning("%s: lease lost on %d operation(s) %s; not acting on them any "
                                "more", self.owner, len(gone), gone[:20])
                    self.lost.update(gone)
                self.ids = [i for i in self.ids if i in held]
                confirmed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the store may be briefly away
                log.warning("lease renewal failed: %s", type(exc).__name__)
                if time.monotonic() - confirmed > self.lease_s / 2:
                    log.error("%s: no lease renewal for %.0fs; stopping the batch", self.owner,
                              time.monotonic() - confirmed)
                    self.lost.update(self.ids)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


def run_batch(ctx: credentials.Context, ops: Sequence[Operation], lease_s: float) -> Counter:
    """Run one claimed batch with its handlers; returns outcome counts by final state."""
    heartbeat = _Heartbeat(ctx.engine, ops, ctx.owner or "", lease_s, ctx.lost)
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
    ids = [row_id(op) for op in ops]
    lost = [i for i in ids if i in ctx.lost]
    outcome = _outcomes(ctx.engine, [i for i in ids if i not in ctx.lost])
    if lost:
        outcome["lost"] += len(lost)  # another executor (or recovery) finished them
    return outcome


def _fail_leftovers(ctx: credentials.Context, ops: Sequence[Operation], why: str) -> None:
    """Operations still running under our lease after their handler: fail them, retryable.

    Their credential keeps any pending secret and is settled by reconciliation.
    """
    try:
        with Session(ctx.engine, expire_on_commit=False) as db:
            rows = opqueue.hold(db, {row_id(op): op.lease_epoch for op in ops}, ctx.owner)
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
    if not ids:
        return Counter()
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(col(Operation.state), sa.func.count())
                                .where(col(Operation.id).in_(ids)).group_by(col(Operation.state))).all()
        return Counter({state: n for state, n in rows})
    except Exception:  # noqa: BLE001
        return Counter({"unknown": len(ids)})


def drain(engine: Engine | None = None, *, owner: str | None = None, batch_size: int = 100,
          workers: int = 16, stop_when_empty: bool = True, kinds: Sequence[str] | None = None,
          lease_s: float = opqueue.DEFAULT_LEASE_SECONDS, max_batches: int | None = None,
          on_batch: Callable[[DrainSummary], None] | None = None,
          should_stop: Callable[[], bool] | None = None, poll_s: float = 1.0,
          pipeline: int = 2, stop: threading.Event | None = None,
          policy_source: PolicySource | None = None) -> DrainSummary:
    """Claim and run operations until the queue has nothing runnable; return what was done.

    With ``stop_when_empty=False`` it keeps polling every ``poll_s`` until ``should_stop()``.
    ``on_batch(summary_so_far)`` is called after each batch (progress artifacts).

    ``pipeline`` batches are in flight at once (each its own claim loop under the same
    owner), so one batch's verification overlaps the next one's ``chpasswd``: the target
    hashes passwords in one process per ``chpasswd`` and the verifying logins use the
    other cores.

    ``stop`` (set by a stopping service): no new claim, and the batches in flight give
    back what they have not started on a target (see ``pamflow.credentials``), so the
    executor ends within seconds.
    """
    from ..db import store

    engine = engine or store()
    owner = owner or new_owner()
    kinds = list(kinds or HANDLERS)
    ctx = credentials.Context(engine=engine, owner=owner, workers=workers, stop=stop,
                              policy_source=policy_source)
    totals: Counter = Counter()
    lock = threading.Lock()
    batches = [0]

    def done() -> bool:
        with lock:
            return max_batches is not None and batches[0] >= max_batches

    def loop() -> None:
        while not done():
            if (should_stop is not None and should_stop()) or ctx.stopping():
                return
            ops = opqueue.claim(engine, owner, batch_size, lease_s=lease_s, kinds=kinds)
            if not ops:
                if stop_when_empty:
                    return
                if stop is not None:
                    stop.wait(poll_s)
                else:
                    time.sleep(poll_s)
                continue
            outcome = run_batch(ctx, ops, lease_s)
            with lock:
                batches[0] += 1
                totals["claimed"] += len(ops)
                totals.update(outcome)
                summary = _summary(owner, batches[0], totals)
            log.info("%s: batch %d: %d operation(s): %s", owner, summary.batches, len(ops),
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


@dataclass(frozen=True)
class DrainSummary:
    """What a drain did: batches run and operations claimed, by final state (``other``:
    given back, lost to another executor, or neither succeeded nor failed)."""

    owner: str
    batches: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    other: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServeSummary(DrainSummary):
    """What one service instance did over its life: its drains' totals, how many times it
    polled the queue, and whether it ended because it was told to stop."""

    polls: int = 0
    stopped: bool = False
    duty_work: int = 0  # things its duties did (pamflow.operations.duties)


@dataclass(frozen=True)
class Recovery:
    """What recovery did: leases released (their operations queued again), credentials it
    queued a reconcile for, and the drain that settled them (when it ran one)."""

    released_leases: int
    reconcile_queued: int
    released: list[opqueue.ReleasedLease]
    credentials: list[int]
    drained: DrainSummary | None = None

    def as_dict(self) -> dict[str, Any]:
        """Counts and ids (the released operations are counted, not listed)."""
        out = asdict(self)
        out.pop("released")
        return out


def _summary(owner: str, batches: int, totals: Counter) -> DrainSummary:
    return DrainSummary(
        owner=owner, batches=batches, claimed=totals["claimed"],
        succeeded=totals[OperationState.succeeded], failed=totals[OperationState.failed],
        other=sum(n for k, n in totals.items()
                  if k not in ("claimed", OperationState.succeeded, OperationState.failed)))


def serve(lifetime_s: float = 3600.0, poll_s: float = 1.0, engine: Engine | None = None, *,
          owner: str | None = None, batch_size: int = 100, workers: int = 16,
          kinds: Sequence[str] | None = None, lease_s: float = opqueue.DEFAULT_LEASE_SECONDS,
          on_batch: Callable[[DrainSummary], None] | None = None,
          on_idle: Callable[[], None] | None = None,
          stop: threading.Event | None = None,
          burst: Callable[..., DrainSummary] | None = None,
          policy_source: PolicySource | None = None,
          duties: Callable[[], dict[str, int]] | None = None) -> ServeSummary:
    """One long-lived executor instance: poll every ``poll_s`` for ``lifetime_s`` seconds.

    When work is runnable it runs a *burst*: ``drain`` until nothing is runnable (or
    ``burst(**drain_arguments)``, which the Prefect flow uses to make each burst a task
    run). ``on_idle`` is called after each empty poll. ``duties`` (a
    ``duties.DutyRunner``'s ``run_due``) is called before each poll: the minute-level jobs
    run inside this instance instead of as flow runs of their own.

    Stopping: when ``stop`` is set, and on SIGTERM/SIGINT when run in the main thread, it
    claims nothing more; the batch in flight gives back (re-queues) the operations it has
    not yet started on a target and finishes the others, so the instance ends within a
    few seconds with nothing left running under its lease. The previous signal handlers
    (Prefect's, in a flow run) are put back on return.
    """
    from ..db import store
    from ..vault import vault

    engine = engine or store()
    vault()  # a store sealed with another key stops this instance now, not at its first batch
    owner = owner or new_owner("executor-service")
    deadline = time.monotonic() + lifetime_s
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, _frame: _stop_requested(stop, signum))
    run = burst or drain
    totals: Counter = Counter()
    polls = 0
    duty_work = 0
    log.info("%s serving: polling the queue every %gs for %gs", owner, poll_s, lifetime_s)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            polls += 1
            if duties is not None:
                duty_work += sum(duties().values())
            if opqueue.runnable_count(engine, kinds or list(HANDLERS)):
                done = run(engine=engine, owner=owner, batch_size=batch_size, workers=workers,
                           kinds=kinds, lease_s=lease_s, on_batch=on_batch, stop=stop,
                           should_stop=lambda: time.monotonic() >= deadline,
                           policy_source=policy_source)
                totals.update({k: v for k, v in done.as_dict().items() if isinstance(v, int)})
                continue
            if on_idle is not None:
                on_idle()
            stop.wait(min(poll_s, max(0.0, deadline - time.monotonic())))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return ServeSummary(owner=owner, polls=polls, stopped=stop.is_set(), duty_work=duty_work,
                        **{k: totals[k] for k in ("batches", "claimed", "succeeded", "failed",
                                                  "other")})


def _stop_requested(stop: threading.Event, signum: int) -> None:
    if not stop.is_set():
        log.warning("signal %s: the executor stops claiming and gives back what it has not "
                    "started", signal.Signals(signum).name)
    stop.set()


def recover(engine: Engine | None = None, *, owner: str | None = None, run: bool = True,
            now: datetime | None = None, workers: int = 16,
            policy_source: PolicySource | None = None) -> Recovery:
    """Settle everything a crash or an outage left behind, without a human.

    1. running operations whose lease expired go back to the queue (they resume from
       their recorded step: a pending secret is settled before anything else);
    2. every credential reconciliation must settle (``credentials.needs_settling``) gets a
       reconcile operation;
    3. with ``run``, the queue is drained here, so recovery does not wait for an executor.
    """
    from ..db import store

    engine = engine or store()
    released = opqueue.release_expired_leases(engine, now=now)
    cred_ids = credentials.needs_settling(engine)
    queued = opqueue.enqueue_many(
        engine, [dict(kind="reconcile", credential_id=c, priority=10,
                      reason="recovery: pending, unverified or invalid secret") for c in cred_ids],
        requested_by="recovery", emit=not run) if cred_ids else []
    drained = drain(engine, owner=owner or f"recovery-{os.getpid()}", workers=workers,
                    policy_source=policy_source) if run else None
    return Recovery(released_leases=len(released), reconcile_queued=len(queued),
                    released=released, credentials=cred_ids, drained=drained)


def _main(argv: list[str]) -> int:
    """``python -m pamflow.operations.executor [drain|serve SECONDS]`` (tests, operators)."""
    logging.basicConfig(level=os.environ.get("PAMFLOW_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lease = float(os.environ.get("PAMFLOW_LEASE_SECONDS") or opqueue.DEFAULT_LEASE_SECONDS)
    batch = int(os.environ.get("PAMFLOW_BATCH_SIZE") or 100)
    if argv[:1] == ["serve"]:
        lifetime = float(argv[1]) if len(argv) > 1 else 3600.0
        print(json.dumps(serve(lifetime, lease_s=lease, batch_size=batch).as_dict()), flush=True)
        return 0
    print(json.dumps(drain(lease_s=lease, batch_size=batch).as_dict()), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(_main(sys.argv[1:]))

__all__ = ["HANDLERS", "drain", "new_owner", "register_handler", "run_batch", "serve"]
