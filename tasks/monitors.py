"""System monitor tasks: pamflow.monitors wrapped for Prefect (settings from the block,
the store, artifacts). One task run per monitor, never per mount or listener."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

if TYPE_CHECKING:  # imported where used: the flow module stays cheap to import
    from pamflow.monitors.alarms import AlarmsReport
    from pamflow.monitors.backup import BackupReport
    from pamflow.monitors.disk import DiskReport
    from pamflow.monitors.keys import KeysReport
    from pamflow.monitors.listeners import ListenersReport, ServiceCheck
    from pamflow.monitors.maintenance import MaintenanceReport
    from pamflow.monitors.schedule import RunFact, ScheduledRobot, ScheduleReport
    from pamflow.monitors.settings import MonitorSettings
    from pamflow.monitors.tunnels import TunnelsReport
    from pamflow.monitors.usage import UsageReport


def _unless_bad_settings(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed settings load, unless the block itself is invalid (that stays so)."""
    from pamflow.monitors import SettingsError

    try:
        state.result()
    except SettingsError:
        return False
    except Exception:  # noqa: BLE001 - anything else (the API busy, say) is worth a retry
        return True
    return True


@task(name="load-monitor-settings", retries=2, retry_delay_seconds=5,
      retry_condition_fn=_unless_bad_settings)
def load_settings(name: str = "default") -> MonitorSettings:
    """The thresholds block ``name`` (the seeds' defaults when it does not exist)."""
    from blocks.monitor_thresholds import load_monitor_settings

    return load_monitor_settings(name)


@task(name="cpu-and-memory-monitor")
def check_cpu_and_memory(settings: MonitorSettings) -> UsageReport:
    """Add this run's CPU interval and memory samples, raise or end episodes."""
    from pamflow.db import store
    from pamflow.monitors.usage import PsutilUsage, check_usage

    return check_usage(store(), PsutilUsage(), settings)


@task(name="disk-space-monitor")
def check_disk_space(settings: MonitorSettings) -> DiskReport:
    """Free space of each configured mount against the 30/20/10 % lines."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.monitors.disk import DAILY, check_disks, daily_report

    report = check_disks(store(), settings)
    if daily_report(store(), report, settings, utcnow()):
        report.daily = DAILY
    return report


def prefect_server_check() -> ServiceCheck:
    """The Prefect server this run talks to: ACTIVE when its health check answers."""
    from prefect.client.orchestration import get_client

    from pamflow.monitors.listeners import ServiceCheck

    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
        url = str(client.api_url)
    if failure is not None:
        return ServiceCheck("INACTIVE", f"{url}: {type(failure).__name__}: {str(failure)[:200]}")
    return ServiceCheck("ACTIVE", url)


def worker_check(pool: str) -> ServiceCheck:
    """The work pool's workers: ACTIVE with one online, INACTIVE with none, DISABLED when
    the pool is paused or does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from pamflow.monitors.listeners import ServiceCheck

    with get_client(sync_client=True) as client:
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound:
            return ServiceCheck("DISABLED", f"work pool {pool} does not exist")
        if work_pool.is_paused:
            return ServiceCheck("DISABLED", f"work pool {pool} is paused")
        workers = client.read_workers_for_work_pool(pool)
    online = sorted(w.name for w in workers if str(getattr(w.status, "value", w.status)) == "ONLINE")
    if online:
        return ServiceCheck("ACTIVE", f"{len(online)} online in {pool}: {', '.join(online[:5])}")
    return ServiceCheck("INACTIVE", f"no worker online in work pool {pool}")


@task(name="services-and-listeners-monitor")
def check_services_and_listeners(settings: MonitorSettings) -> ListenersReport:
    """The platform's parts (Prefect server, worker, gateway, database, SMTP relay) and the
    configured TCP listeners, in the states of Appendix I; a change is alerted once."""
    from pamflow.db import store
    from pamflow.monitors.listeners import (
        ServiceCheck,
        check_listeners_and_services,
        database_alive,
        http_health,
        smtp_banner,
    )

    engine = store()
    gateway = settings.gateway_url
    services = {
        "prefect-server": prefect_server_check,
        "worker": lambda: worker_check(settings.work_pool),
        "gateway": (lambda: http_health(gateway.rstrip("/") + "/health")) if gateway
        else (lambda: ServiceCheck("DISABLED", "no gateway configured")),
        "database": lambda: database_alive(engine),
        "smtp-relay": lambda: smtp_banner(settings.smtp_relay),
    }
    return check_listeners_and_services(engine, settings.listeners, services)


@task(name="tunnel-heartbeat-check")
def check_tunnel_heartbeats(settings: MonitorSettings) -> TunnelsReport:
    """Each configured connector's tunnel endpoint: a heartbeat, or failed past its interval."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.monitors.tunnels import check_tunnels

    return check_tunnels(store(), settings.connectors, utcnow())


@task(name="create-alarms")
def create_alarms(usage: UsageReport, disks: DiskReport) -> AlarmsReport:
    """Alarm definitions against this run's diagnostic values: open and close alarms."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.monitors.alarms import Reading, evaluate

    now = utcnow()
    readings: dict[str, Reading] = {}
    for m in usage.metrics:
        if m.newest is not None:
            readings[f"{m.metric}_percent"] = Reading(m.newest, m.newest_since or now)
    for d in disks.mounts:
        if d.free_percent is not None:
            readings[f"disk_free_percent:{d.mount}"] = Reading(d.free_percent, now)
    return evaluate(store(), readings, now, usage.host)


@task(name="delete-closed-alarms")
def delete_closed_alarms() -> int:
    """Closed alarms older than six months, deleted in batches."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.monitors.alarms import delete_closed

    return delete_closed(store(), utcnow())


@task(name="apply-maintenance-windows")
def apply_maintenance_windows() -> MaintenanceReport:
    """Devices in and out of maintenance mode by their windows, now."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.monitors.maintenance import apply_windows

    return apply_windows(store(), utcnow())


@task(name="schedule-next-maintenance-check")
def schedule_next_check(deployment_id: str | None, when: datetime | None,
                        horizon_hours: float = 1.0) -> str | None:
    """A run of this robot's deployment at the next window boundary ``when`` (when it comes
    before the hourly run), at most once per boundary (an idempotency key). Returns the
    scheduled run's id, or None (no deployment, no boundary, or one past the horizon)."""
    from datetime import UTC, timedelta
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    if deployment_id is None or when is None:
        return None
    now = datetime.now(UTC)
    if when > now + timedelta(hours=horizon_hours):
        return None
    at = max(when, now) + timedelta(seconds=1)  # just after the boundary
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            UUID(deployment_id), state=Scheduled(scheduled_time=at),
            idempotency_key=f"maintenance-boundary-{when.isoformat()}",
            tags=["maintenance-boundary"])
    return str(run.id)


def publish_maintenance_report(report: MaintenanceReport, scheduled: str | None) -> None:
    rows = [{"device": name, "change": "entered maintenance"} for name in report.entered]
    rows += [{"device": name, "change": "left maintenance"} for name in report.left]
    create_table_artifact(table=rows or [{"device": "-", "change": "no change"}],
                          key="maintenance-mode-changes",
                          description=f"Maintenance mode: {len(report.entered)} entered, "
                                      f"{len(report.left)} left")
    nxt = report.next_change.isoformat() if report.next_change else "none"
    create_markdown_artifact(
        markdown=(f"# Maintenance mode check\n\n{len(report.entered)} devices entered and "
                  f"{len(report.left)} left maintenance; {report.in_maintenance} are in "
                  f"maintenance now (robots skip them). Next window boundary: {nxt}"
                  + (f"; a run is scheduled for it ({scheduled})." if scheduled else ".")),
        key="maintenance-mode-summary", description="Maintenance mode check summary")


@task(name="primary-key-monitor")
def check_primary_keys(settings: MonitorSettings) -> KeysReport:
    """Integer primary keys of the store against their type's maximum."""
    from pamflow.db import store
    from pamflow.monitors.keys import check_keys

    return check_keys(store(), settings)


@task(name="backup-monitor")
def check_backups(settings: MonitorSettings) -> BackupReport:
    """The store answers, a backup is configured and its newest file is fresh."""
    from pamflow.db import store
    from pamflow.monitors.backup import check_backup

    return check_backup(store(), settings)


PAGE = 200
MAX_RUNS = 20_000


def _fire_times(schedule: Any, start: datetime, end: datetime) -> list[datetime]:
    """The fire times of a deployment's schedule in ``[start, end]`` (the server's own
    schedule arithmetic: cron with its time zone and day_or, interval, rrule)."""
    from prefect.server.schemas import schedules as server_schedules

    kind = getattr(server_schedules, type(schedule).__name__, None)
    if kind is None:
        return []
    server_side = kind.model_validate(schedule.model_dump())
    return [d for d in server_side._get_dates_generator(start=start, end=end) if start <= d <= end]


def read_schedule_facts(now: datetime, settings: MonitorSettings
                        ) -> tuple[list[ScheduledRobot], list[RunFact]]:
    """From the Prefect API: every deployment with its active schedules' fire times over the
    look-back window (never before the deployment or schedule existed), and the flow runs
    of deployments expected in that window or Running now."""
    from datetime import timedelta

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from pamflow.monitors.schedule import RunFact, ScheduledRobot

    since = now - timedelta(hours=settings.schedule_lookback_hours)
    robots: list[ScheduledRobot] = []
    names: dict[str, str] = {}
    runs: dict[str, RunFact] = {}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_deployments(limit=PAGE, offset=offset)
            for dep in page:
                names[str(dep.id)] = dep.name
                fires: set[datetime] = set()
                for sched in dep.schedules or []:
                    if not sched.active:
                        continue
                    start = max(since, dep.created or since, sched.created or since)
                    fires.update(_fire_times(sched.schedule, start, now))
                if fires:
                    robots.append(ScheduledRobot(dep.name, str(dep.id), bool(dep.paused),
                                                 tuple(sorted(fires))))
            if len(page) < PAGE:
                break
            offset += PAGE
        has_deployment = FlowRunFilterDeploymentId(is_null_=False)
        for run_filter in (
            FlowRunFilter(deployment_id=has_deployment,
                          expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                              {"after_": since, "before_": now})),
            FlowRunFilter(deployment_id=has_deployment, state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
        ):
            offset = 0
            while offset < MAX_RUNS:
                batch = client.read_flow_runs(flow_run_filter=run_filter, limit=PAGE, offset=offset)
                for run in batch:
                    dep_id = str(run.deployment_id)
                    runs[str(run.id)] = RunFact(
                        str(run.id), run.name, names.get(dep_id, dep_id), dep_id,
                        str(getattr(run.state_type, "value", run.state_type)),
                        run.state_name or "", run.expected_start_time, run.start_time,
                        run.end_time)
                if len(batch) < PAGE:
                    break
                offset += PAGE
    return robots, list(runs.values())


@task(name="schedule-monitor")
def check_schedule(settings: MonitorSettings, now: datetime | None = None) -> ScheduleReport:
    """Robots whose runs are late, missing, stuck Running or crashed (from the Prefect API)."""
    from pamflow.db import store
    from pamflow.models import utcnow
    from pamflow.monitors.schedule import check_schedules

    at = now or utcnow()
    robots, runs = read_schedule_facts(at, settings)
    return check_schedules(store(), robots, runs, at, settings)


def publish_platform_report(keys: KeysReport, backup: BackupReport, schedule: ScheduleReport,
                            alerts: list[str]) -> None:
    """The primary keys, the backup and the schedule problems as artifacts of the run."""
    rows: list[dict[str, Any]] = [
        {"monitor": "primary key", "object": f"{k.table}.{k.column}",
         "value": f"{k.current:,} of {k.maximum:,} ({k.percent:.2f} %)",
         "state": ["ok", "high", "critical"][k.level]} for k in keys.keys]
    rows.append({"monitor": "backup", "object": "backup", "value": backup.detail,
                 "state": backup.problem or "ok"})
    rows += [{"monitor": "schedule", "object": p.robot, "value": p.line(), "state": p.kind}
             for p in schedule.problems[:500]]
    create_table_artifact(table=rows, key="platform-monitor-readings",
                          description=f"Platform monitor: {len(keys.keys)} keys, backup, "
                                      f"{len(schedule.problems)} schedule problems")
    lines = ["# Platform monitor", "",
             "| keys | highest key use | backup | schedule problems | new | alerts |",
             "|---:|---:|---|---:|---:|---:|",
             f"| {len(keys.keys)} | {max((k.percent for k in keys.keys), default=0):.2f} % | "
             f"{backup.problem or 'ok'} | {len(schedule.problems)} | {len(schedule.new)} | "
             f"{len(alerts)} |", ""]
    lines += [f"- {a}" for a in alerts[:100]] or ["No new alert."]
    create_markdown_artifact(markdown="\n".join(lines), key="platform-monitor-summary",
                             description="Platform monitor summary")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def publish_system_report(usage: UsageReport | None, disks: DiskReport | None,
                          states: ListenersReport | None = None,
                          tunnels: TunnelsReport | None = None,
                          alerts: list[str] | None = None, errors: list[str] | None = None
                          ) -> None:
    """One table of everything this run measured and a markdown summary of its alerts."""
    rows: list[dict[str, Any]] = []
    if usage is not None:
        for m in usage.metrics:
            rows.append({"monitor": m.metric, "object": usage.host,
                         "value": f"{_pct(m.newest)} % used (window min {_pct(m.sustained)} %)",
                         "state": m.level, "alert": m.alert or ""})
    if disks is not None:
        for d in disks.mounts:
            rows.append({"monitor": "disk", "object": d.mount,
                         "value": d.error or f"{_pct(d.free_percent)} % free",
                         "state": ["ok", "low", "medium", "high"][d.level], "alert": d.alert or ""})
    if states is not None:
        for r in states.results:
            rows.append({"monitor": r.kind, "object": r.name, "value": r.detail[:120],
                         "state": r.state, "alert": r.alert or ""})
    if tunnels is not None:
        for t in tunnels.results:
            rows.append({"monitor": "connector", "object": t.name,
                         "value": f"last heartbeat {t.last_heartbeat or 'never'}"
                                  + (f" ({t.detail})" if t.detail else ""),
                         "state": t.state, "alert": t.alert or ""})
    create_table_artifact(table=rows or [{"monitor": "-", "object": "-", "value": "-",
                                          "state": "-", "alert": ""}],
                          key="system-monitor-readings",
                          description=f"System monitor: {len(rows)} readings")
    raised = alerts or []
    lines = ["# System monitor", "", f"{len(rows)} readings, {len(raised)} alerts queued.", ""]
    lines += [f"- {a}" for a in raised] or ["No alert: nothing crossed a line or ended an episode."]
    if errors:
        lines += ["", "**Could not check**:"] + [f"- {e}" for e in errors]
    create_markdown_artifact(markdown="\n".join(lines), key="system-monitor-summary",
                             description="System monitor summary")
