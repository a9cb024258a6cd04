"""Schedule monitor (seed 000): "Monitors if all scheduled tasks are running and if there is
no late task" — robots whose runs are late, missing, stuck Running or crashed, with the
robot and the expected time.

The Prefect layer reads the deployments (their schedules' fire times over the look-back
window) and the flow runs from the Prefect API and hands them here as plain facts:

- **late**: a run still Scheduled or Pending ``schedule_late_minutes`` after its expected
  start;
- **missing**: a fire time of an active schedule of an unpaused robot, older than
  ``schedule_late_minutes``, with no run at all (the scheduler or the server was down, or
  the runs were deleted);
- **stuck**: a run Running for more than ``schedule_stuck_minutes``;
- **crashed**: a run that crashed (its process died: no result, no clean failure).

Each problem is notified once ("Scheduled robot problem", one notification per run of the
monitor listing the new problems) and recorded in the audit log; what was notified is
remembered in the store while it lasts, and for twice the look-back window after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..models import MonitorState
from . import state as monitor_state
from .alerts import ACTOR
from .settings import MonitorSettings

NOTIFICATION = "Scheduled robot problem"
PREFIX = "schedule:"
SHOWN = 50


@dataclass(frozen=True)
class ScheduledRobot:
    """A deployment with active schedules: its name and the fire times due in the window."""

    name: str
    deployment_id: str
    paused: bool
    fire_times: tuple[datetime, ...]


@dataclass(frozen=True)
class RunFact:
    id: str
    name: str
    robot: str  # its deployment's name
    deployment_id: str
    state_type: str  # SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED, ...
    state_name: str
    expected_start: datetime | None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class Problem:
    kind: str  # late | missing | stuck | crashed
    robot: str
    expected: datetime | None
    run: str | None
    detail: str

    @property
    def key(self) -> str:
        what = self.run or (self.expected.isoformat() if self.expected else "-")
        return f"{PREFIX}{self.kind}:{self.robot}:{what}"[:300]

    def line(self) -> str:
        when = self.expected.strftime("%Y-%m-%d %H:%M UTC") if self.expected else "-"
        return f"{self.kind}: {self.robot}, expected {when}" + (f", run {self.run}" if self.run else "") \
            + f" ({self.detail})"


@dataclass
class ScheduleReport:
    problems: list[Problem] = field(default_factory=list)  # everything found this run
    new: list[Problem] = field(default_factory=list)  # notified by this run

    @property
    def alerts(self) -> list[str]:
        return [f"{NOTIFICATION}: {p.line()}" for p in self.new]


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:.0f} min"


def find_problems(robots: list[ScheduledRobot], runs: list[RunFact], now: datetime,
                  settings: MonitorSettings) -> list[Problem]:
    late_after = timedelta(minutes=settings.schedule_late_minutes)
    stuck_after = timedelta(minutes=settings.schedule_stuck_minutes)
    found: list[Problem] = []
    for run in runs:
        if run.state_type in ("SCHEDULED", "PENDING") and run.expected_start is not None \
                and run.expected_start < now - late_after:
            found.append(Problem("late", run.robot, run.expected_start, run.name,
                                 f"{run.state_name} {_minutes(now - run.expected_start)} after its time"))
        elif run.state_type == "RUNNING" and run.start_time is not None \
                and run.start_time < now - stuck_after:
            found.append(Problem("stuck", run.robot, run.expected_start, run.name,
                                 f"Running for {_minutes(now - run.start_time)}"))
        elif run.state_type == "CRASHED":
            found.append(Problem("crashed", run.robot, run.expected_start, run.name,
                                 f"{run.state_name}"))
    expected_runs: dict[str, list[datetime]] = {}
    for run in runs:
        if run.expected_start is not None:
            expected_runs.setdefault(run.deployment_id, []).append(run.expected_start)
    for robot in robots:
        if robot.paused:
            continue
        had = expected_runs.get(robot.deployment_id, [])
        for fire in robot.fire_times:
            if fire >= now - late_after:
                continue
            if not any(abs((t - fire).total_seconds()) < 1 for t in had):
                found.append(Problem("missing", robot.name, fire, None, "no run was created"))
    return sorted(found, key=lambda p: (p.robot, p.expected or now, p.kind))


def check_schedules(engine: Engine, robots: list[ScheduledRobot], runs: list[RunFact],
                    now: datetime, settings: MonitorSettings) -> ScheduleReport:
    """Find the problems, notify the new ones once, forget what is long past."""
    report = ScheduleReport(find_problems(robots, runs, now, settings))
    with Session(engine) as db:
        for problem in report.problems:
            known = bool(monitor_state.load(db, problem.key))
            monitor_state.save(db, problem.key, {"seen": now.isoformat(), "kind": problem.kind})
            if known:
                continue
            report.new.append(problem)
            audit.record(db, ACTOR, f"monitor.schedule.{problem.kind}", "deployment", problem.robot,
                         {"expected": problem.expected.isoformat() if problem.expected else None,
                          "run": problem.run, "detail": problem.detail})
        if report.new:
            lines = [p.line() for p in report.new[:SHOWN]]
            more = len(report.new) - len(lines)
            robots_hit = sorted({p.robot for p in report.new})
            notifications.queue(
                db, NOTIFICATION,
                f"{len(report.new)} scheduled robot problem(s): {', '.join(robots_hit[:5])}"
                + (" ..." if len(robots_hit) > 5 else ""),
                "Schedule monitor: robots whose runs are late, missing, stuck Running or "
                "crashed:\n" + "\n".join(f"- {line}" for line in lines)
                + (f"\n- and {more} more" if more else ""),
                context={"problems": [{"kind": p.kind, "robot": p.robot, "run": p.run,
                                       "expected": p.expected.isoformat() if p.expected else None}
                                      for p in report.new[:SHOWN]]})
        horizon = now - timedelta(hours=2 * settings.schedule_lookback_hours)
        for row in db.exec(select(MonitorState).where(col(MonitorState.key).startswith(PREFIX))):
            seen = row.state.get("seen")
            if not seen or datetime.fromisoformat(seen) < horizon:
                db.delete(row)
        db.commit()
    return report
