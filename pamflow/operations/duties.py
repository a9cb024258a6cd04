"""Duties: the minute-level jobs a long-lived service robot runs between its polls.

A duty is a robot's job that must happen often but usually finds nothing to do (due
passwords, retries, expired operations, reservations). Run as its own flow run every minute
it would cost a Python process and a flow run each time; run as a duty it costs one cheap
query in the operation executor's service instance, and the Prefect "Process" report shows
only the runs that did work (each duty that found something publishes its robot's table).

The registry is small on purpose: ``register(name, interval_s, run)`` where ``name`` is the
robot (deployment) whose job it is, and ``run(engine)`` does one pass and returns what it
did (a list, or a count). A family adds its duties in a module of its own and lists that
module in ``DUTY_MODULES``; ``load()`` imports them. The robot's deployment stays in
prefect.yaml (its schedule inactive) so it can still be run by hand, and the panel shows the
duty's interval and last run.

Interval override: ``PAMFLOW_DUTY_<NAME>_SECONDS`` (name upper-cased, ``-`` as ``_``), e.g.
``PAMFLOW_DUTY_EXPIRED_PASSWORD_SECONDS=300``.

Exactly-once per slot across instances: a duty runs only after its row in the ``duty``
table had ``next_due_at`` moved forward by this instance (a conditional update), so two
executor instances, or an instance restarted after a crash, never run one slot twice.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from ..models import DutyState, utcnow

log = logging.getLogger(__name__)

HOST = "operation-executor"
# Modules that register duties when imported (other families append theirs).
DUTY_MODULES: list[str] = ["pamflow.operations.duties", "tasks.housekeeping"]


@dataclass(frozen=True)
class Duty:
    name: str  # the robot (deployment) whose job this is
    interval_s: float
    run: Callable[[Engine], Any]  # one pass; returns what it did (a list or a count)
    host: str = HOST  # the service robot that runs it

    @property
    def every(self) -> float:
        env = f"PAMFLOW_DUTY_{self.name.upper().replace('-', '_')}_SECONDS"
        try:
            value = float(os.environ.get(env) or self.interval_s)
        except ValueError:
            return self.interval_s
        return value if value >= 1 else self.interval_s


REGISTRY: dict[str, Duty] = {}


def register(name: str, interval_s: float, run: Callable[[Engine], Any], host: str = HOST) -> Duty:
    """Add (or replace) the duty ``name``."""
    duty = Duty(name, float(interval_s), run, host)
    REGISTRY[name] = duty
    return duty


def load(modules: list[str] | None = None) -> dict[str, Duty]:
    """Import every module that registers duties; returns the registry."""
    for module in modules or DUTY_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a family not installed here: its duties are absent
            log.warning("duties of %s not loaded: %s", module, exc)
    return REGISTRY


def found(result: Any) -> int:
    """How many things a duty's result says it did."""
    if result is None:
        return 0
    if isinstance(result, bool):
        return int(result)
    if isinstance(result, int):
        return result
    counter = getattr(result, "found", None)
    if isinstance(counter, int):
        return counter
    if isinstance(result, Sized):
        return len(result)
    return 1


def _claim(engine: Engine, duty: Duty, owner: str) -> bool:
    """Move ``duty``'s next slot forward if it is due; True when this caller got the slot."""
    now = utcnow()
    with Session(engine) as db:
        if db.get(DutyState, duty.name) is None:
            try:
                db.add(DutyState(name=duty.name, next_due_at=now))
                db.commit()
            except IntegrityError:  # another instance created it first
                db.rollback()
        moved = db.execute(sa.update(DutyState).where(
            col(DutyState.name) == duty.name, col(DutyState.next_due_at) <= now).values(
            next_due_at=now + timedelta(seconds=duty.every), owner=owner,
            last_started_at=now, runs=col(DutyState.runs) + 1))
        db.commit()
        return getattr(moved, "rowcount", 0) == 1


def _finish(engine: Engine, duty: Duty, n: int, error: str | None) -> None:
    now = utcnow()
    values: dict[str, Any] = dict(last_finished_at=now, last_found=n, last_error=error)
    if n:
        values["last_work_at"] = now
    with Session(engine) as db:
        db.execute(sa.update(DutyState).where(col(DutyState.name) == duty.name).values(**values))
        db.commit()


def states(engine: Engine) -> dict[str, DutyState]:
    """Every duty's row (for the panel)."""
    from sqlmodel import select

    with Session(engine) as db:
        return {row.name: row for row in db.exec(select(DutyState)).all()}


class DutyRunner:
    """Runs the registered duties of ``host`` when due; call ``run_due()`` often (cheap:
    nothing touches the store until a duty's local timer has passed)."""

    def __init__(self, engine: Engine, owner: str, host: str = HOST,
                 on_done: Callable[[Duty, Any], object] | None = None,
                 duties: dict[str, Duty] | None = None) -> None:
        self.engine = engine
        self.owner = owner
        self.on_done = on_done
        self.duties = [d for d in (duties if duties is not None else load()).values()
                       if d.host == host]
        self.next_try: dict[str, float] = {}
        self.done: dict[str, int] = {}

    def run_due(self) -> dict[str, int]:
        """Run every duty whose slot has come; returns {name: things done} for those run."""
        ran: dict[str, int] = {}
        now = time.monotonic()
        for duty in self.duties:
            if self.next_try.get(duty.name, 0.0) > now:
                continue
            # not due, or another instance ran this slot: look again in a while
            self.next_try[duty.name] = now + min(duty.every, 15.0)
            try:
                if not _claim(self.engine, duty, self.owner):
                    continue
            except Exception as exc:  # noqa: BLE001 - the store is busy: next time
                log.warning("duty %s: could not claim its slot: %s", duty.name, exc)
                continue
            self.next_try[duty.name] = now + duty.every
            error = None
            result: Any = None
            try:
                result = duty.run(self.engine)
            except Exception as exc:  # noqa: BLE001 - a duty's failure never stops the service
                error = f"{exc.__class__.__name__}: {str(exc)[:500]}"
                log.error("duty %s failed: %s", duty.name, error)
            n = found(result)
            try:
                _finish(self.engine, duty, n, error)
            except Exception as exc:  # noqa: BLE001
                log.warning("duty %s: could not record its run: %s", duty.name, exc)
            ran[duty.name] = n
            self.done[duty.name] = self.done.get(duty.name, 0) + n
            if n:
                log.info("duty %s: %d done", duty.name, n)
                if self.on_done is not None:
                    try:
                        self.on_done(duty, result)
                    except Exception as exc:  # noqa: BLE001 - reporting must not stop work
                        log.warning("duty %s: report failed: %s", duty.name, exc)
        return ran


# ---- the credential and queue duties (formerly every-minute robots) -----------------------
def _retry(engine: Engine):
    from .queue import retry_failed

    return retry_failed(engine)


def _cancel_expired(engine: Engine):
    from .queue import cancel_expired

    return cancel_expired(engine)


def _due_passwords(engine: Engine):
    from ..credentials import queue_due_changes

    return queue_due_changes(engine)


def _reservations(engine: Engine):
    from ..credentials import process_reservations

    return process_reservations(engine)


@dataclass
class Reconciled:
    """What the reconciliation duty queued (the executor running it then settles them)."""

    released_leases: int
    reconcile_queued: int
    credentials: list[int]

    @property
    def found(self) -> int:
        return self.released_leases + self.reconcile_queued


def _reconcile(engine: Engine) -> Reconciled:
    from .executor import recover

    done = recover(engine, run=False)
    return Reconciled(done.released_leases, done.reconcile_queued, list(done.credentials))


register("operation-executor-retry", 60, _retry)
register("expired-operation-cancellation", 60, _cancel_expired)
register("expired-password", 60, _due_passwords)
register("password-reservation", 60, _reservations)
register("password-reconciliation", 600, _reconcile)
