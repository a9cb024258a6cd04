"""System monitor tasks: pamflow.monitors wrapped for Prefect (settings from the block,
the store, artifacts). One task run per monitor, never per mount or listener."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

if TYPE_CHECKING:  # imported where used: the flow module stays cheap to import
    from pamflow.monitors.disk import DiskReport
    from pamflow.monitors.listeners import ListenersReport, ServiceCheck
    from pamflow.monitors.settings import MonitorSettings
    from pamflow.monitors.usage import UsageReport


@task(name="load-monitor-settings", retries=2, retry_delay_seconds=5)
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
    from pamflow.monitors.disk import check_disks

    return check_disks(store(), settings)


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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def publish_system_report(usage: UsageReport | None, disks: DiskReport | None,
                          states: ListenersReport | None = None,
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
