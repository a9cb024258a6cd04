"""The execution-process panel: every robot (deployment) as the Prefect API sees it.

Read-only; used by ``pamflow robots`` and ``pamflow status``. A robot's family is its
first tag; its time window is the hour field of its cron schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class RobotRow:
    name: str
    flow: str
    family: str
    schedule: str
    window: str
    instances: str
    status: str
    last_state: str
    last_time: datetime | None
    next_run: datetime | None
    triggers: str


def time_window(cron: str) -> str:
    """The hours a cron expression runs in, in words ('always' when every hour)."""
    fields = cron.split()
    if len(fields) < 5:
        return "?"
    hours = fields[1]
    if hours == "*":
        return "always"
    if "-" in hours and "," not in hours and "/" not in hours:
        start, end = hours.split("-", 1)
        return f"{int(start):02d}:00–{int(end):02d}:59"
    return f"hours {hours}"


def _schedule_text(deployment) -> tuple[str, str]:
    texts, windows = [], []
    for item in deployment.schedules or []:
        sched = item.schedule
        tz = getattr(sched, "timezone", None) or "UTC"
        if getattr(sched, "cron", None):
            texts.append(f"cron {sched.cron} {tz}")
            windows.append(time_window(sched.cron))
        elif getattr(sched, "interval", None):
            texts.append(f"every {sched.interval}")
            windows.append("always")
        elif getattr(sched, "rrule", None):
            texts.append(f"rrule {sched.rrule}")
            windows.append("?")
        if not item.active:
            texts[-1] += " (inactive)"
    return "; ".join(texts) or "—", "; ".join(dict.fromkeys(windows)) or "—"


def _triggers_text(client, deployment_id) -> str:
    """The events that start this robot (its deployment triggers, as automations)."""
    try:
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment_id}")
    except Exception:  # noqa: BLE001 - the panel still shows the rest
        return "?"
    events: list[str] = []
    for automation in automations:
        expect = getattr(automation.trigger, "expect", None) or set()
        events.extend(sorted(expect))
    return ", ".join(dict.fromkeys(events))


def _instances(deployment) -> str:
    limit = deployment.global_concurrency_limit
    if limit is None:
        return "∞"
    strategy = getattr(deployment.concurrency_options, "collision_strategy", None)
    suffix = f" ({strategy.value if hasattr(strategy, 'value') else strategy})" if strategy else ""
    return f"{limit.limit}{suffix}"


def robot_rows(client) -> list[RobotRow]:
    """One row per deployment, with its last and next run (sync Prefect client)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    flows = {f.id: f.name for f in client.read_flows()}
    duties, duty_states = _duties()
    rows = []
    for dep in sorted(client.read_deployments(), key=lambda d: (d.tags[:1], d.name)):
        by_dep = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        last = client.read_flow_runs(
            deployment_filter=by_dep,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                not_any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        upcoming = client.read_flow_runs(
            deployment_filter=by_dep,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=1,
        )
        schedule, window = _schedule_text(dep)
        triggers = _triggers_text(client, dep.id)
        last_run = last[0] if last else None
        last_state = last_run.state_name if last_run else "never run"
        last_time = (last_run.start_time or last_run.created) if last_run else None
        next_run = upcoming[0].expected_start_time if upcoming else None
        duty = duties.get(dep.name)
        if duty is not None:  # its job runs inside a service robot (pamflow.operations.duties)
            schedule = f"duty: every {_every(duty.every)} in {duty.host}; " + schedule
            window = "always"
            state = duty_states.get(dep.name)
            if state is not None and state.last_finished_at is not None and (
                    last_time is None or state.last_finished_at > last_time):
                last_state = ("duty failed" if state.last_error
                              else f"duty: {state.last_found} done")
                last_time = state.last_finished_at
            if state is not None:
                next_run = state.next_due_at
        rows.append(
            RobotRow(
                name=dep.name,
                flow=flows.get(dep.flow_id, "?"),
                family=dep.tags[0] if dep.tags else "—",
                schedule=schedule,
                window=window,
                instances=_instances(dep),
                status="paused" if dep.paused else "active",
                last_state=last_state,
                last_time=last_time,
                next_run=next_run,
                triggers=triggers,
            )
        )
    return rows


def _every(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _duties() -> tuple[dict, dict]:
    """The registered duties and their rows in the store (empty when the store is not
    reachable from here: the panel still shows Prefect's side)."""
    from pamflow.operations import duties

    registry = duties.load()
    try:
        from pamflow.db import store

        return registry, duties.states(store())
    except Exception:  # noqa: BLE001
        return registry, {}
