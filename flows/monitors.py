"""System monitors (seeds 000, 001, 002 Appendix I and 003), in three robots.

``system_monitor`` makes a pass every 10 minutes: CPU (the average since the previous run is exact,
from cumulative counters), memory, disk, services and listeners, tunnel heartbeats and
alarms; each alert is raised once per episode, crossing or change (state in the store).
``platform_monitor`` runs hourly: primary keys of the store, the backup, the schedule, and
deletes closed alarms past six months. ``maintenance_mode_check`` runs hourly and at each
maintenance window boundary. The rules are in ``pamflow.monitors``.
"""

from __future__ import annotations

import time

from prefect import flow

from tasks.monitors import (
    apply_maintenance_windows,
    check_backups,
    check_cpu_and_memory,
    check_disk_space,
    check_primary_keys,
    check_schedule,
    check_services_and_listeners,
    check_tunnel_heartbeats,
    create_alarms,
    delete_closed_alarms,
    load_settings,
    publish_maintenance_report,
    publish_platform_report,
    publish_system_report,
    schedule_next_check,
)


@flow(name="system-monitor")
def system_monitor(settings: str = "default", lifetime_s: float = 0, every_s: float = 600) -> dict:
    """CPU and Memory Monitor: notify configured users about system monitor warnings;
    Disk space monitors: notify configured users about disk usage warnings;
    services and listeners in the states of Appendix I (LISTEN ... CLOSED, ACTIVE,
    INACTIVE, DISABLED), notified on change; tunnel heartbeat check of the connectors;
    alarms created from the alarm definitions and these diagnostic values.

    ``settings`` names the Monitor thresholds block (the seeds' defaults without one).
    With ``lifetime_s`` the run is a service instance: a pass every ``every_s`` seconds while
    another pass fits in the lifetime (prefect.yaml: an hourly run of six passes, so the
    10-minute cadence costs one flow run an hour, not six). Returns the last pass's result.
    """
    deadline = time.monotonic() + max(0.0, lifetime_s)
    passes = 0
    while True:
        started = time.monotonic()
        result = _system_pass(settings)
        passes += 1
        wait = max(0.0, every_s - (time.monotonic() - started))
        if time.monotonic() + wait > deadline:  # the next pass would start after the end
            break
        time.sleep(wait)
    return {**result, "passes": passes}


def _system_pass(settings: str) -> dict:
    limits = load_settings(settings)
    usage = check_cpu_and_memory(limits)
    disks = check_disk_space(limits)
    states = check_services_and_listeners(limits)
    tunnels = check_tunnel_heartbeats(limits)
    alarms = create_alarms(usage, disks)
    alerts = usage.alerts + disks.alerts + states.alerts + tunnels.alerts + alarms.alerts
    errors = [d.error for d in disks.mounts if d.error]
    publish_system_report(usage, disks, states, tunnels, alerts=alerts, errors=errors)
    return {
        "cpu": next(m.level for m in usage.metrics if m.metric == "cpu"),
        "memory": next(m.level for m in usage.metrics if m.metric == "memory"),
        "disks": {d.mount: d.free_percent for d in disks.mounts},
        "services": {r.name: r.state for r in states.results if r.kind == "service"},
        "listeners": {r.name: r.state for r in states.results if r.kind == "listener"},
        "connectors": {t.name: t.state for t in tunnels.results},
        "alarms": {"opened": alarms.opened, "closed": alarms.closed, "open": alarms.open_now},
        "alerts": alerts,
        "errors": errors,
    }


@flow(name="platform-monitor")
def platform_monitor(settings: str = "default") -> dict:
    """Primary key monitor: monitors the database primary key and warning if its value is
    close to reaching; Backup monitor: monitors if the database is configured and running
    and if the backup files are updated; Schedule monitor: monitors if all scheduled tasks
    are running and if there is no late task; closed alarms older than six months deleted.
    """
    limits = load_settings(settings)
    keys = check_primary_keys(limits)
    backup = check_backups(limits)
    schedule = check_schedule(limits)
    alarms_deleted = delete_closed_alarms()
    alerts = keys.alerts + ([f"{backup.alert}: {backup.detail}"] if backup.alert else []) \
        + schedule.alerts
    publish_platform_report(keys, backup, schedule, alerts)
    return {
        "keys": {f"{k.table}.{k.column}": k.percent for k in keys.keys},
        "backup": backup.problem or "ok",
        "schedule_problems": [p.line() for p in schedule.problems],
        "closed_alarms_deleted": alarms_deleted,
        "alerts": alerts,
    }


@flow(name="maintenance-mode-check")
def maintenance_mode_check() -> dict:
    """Maintenance mode check: checks devices' maintenance mode definitions and marks devices
    as maintenance or operation modes; a run is scheduled for the next window boundary so
    devices enter and leave on time.
    """
    from prefect.runtime import deployment

    report = apply_maintenance_windows()
    scheduled = schedule_next_check(deployment.id, report.next_change)
    publish_maintenance_report(report, scheduled)
    return {
        "entered": report.entered,
        "left": report.left,
        "in_maintenance": report.in_maintenance,
        "next_change": report.next_change.isoformat() if report.next_change else None,
        "scheduled_run": scheduled,
    }
