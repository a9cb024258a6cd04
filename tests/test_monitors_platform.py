"""Primary key, backup and schedule monitors: a real PostgreSQL sequence set near the
maximum, a real backup directory, and the real Prefect server with crafted runs."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from pamflow.models import AuditLog, Notification
from pamflow.monitors.backup import check_backup
from pamflow.monitors.keys import check_keys
from pamflow.monitors.schedule import RunFact, ScheduledRobot, check_schedules, find_problems
from pamflow.monitors.settings import MonitorSettings


def notes(engine, type_name: str | None = None) -> list[str]:
    with Session(engine) as db:
        query = select(Notification).order_by(col(Notification.id))
        if type_name:
            query = query.where(Notification.type == type_name)
        return [n.subject for n in db.exec(query)]


def levels(report) -> dict[str, tuple[int, str | None]]:
    return {f"{k.table}.{k.column}": (k.level, k.alert) for k in report.keys}


def test_primary_keys_near_the_maximum_on_sqlite(store):
    cfg = MonitorSettings()
    first = levels(check_keys(store, cfg, host="pam1"))
    assert first["notification.id"] == (0, None) and "operation.id" in first
    assert "system_parameter.key" not in first  # not an integer key
    with store.begin() as conn:
        conn.execute(sa.text("INSERT INTO notification (id, type, family, subject, body, recipients, "
                             "context, state, attempts, created_at) VALUES (:id, 't', 'f', 's', 'b', "
                             "'[]', '{}', 'queued', 0, '2026-01-01 00:00:00')"),
                     {"id": int((2**63 - 1) * 0.85)})
    assert levels(check_keys(store, cfg, host="pam1"))["notification.id"] == \
        (1, "Primary key near its maximum")
    assert levels(check_keys(store, cfg, host="pam1"))["notification.id"] == (1, None)


def test_primary_keys_near_the_maximum_on_postgresql(pg_store):
    cfg = MonitorSettings()
    with pg_store.begin() as conn:
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), :v)"),
                     {"v": int((2**31 - 1) * 0.9)})
    report = check_keys(pg_store, cfg, host="pam1")
    found = {f"{k.table}.{k.column}": k for k in report.keys}
    assert found["audit_log.id"].maximum == 2**31 - 1  # an integer column: its type's maximum
    assert (found["audit_log.id"].level, found["audit_log.id"].alert) == (1, "Primary key near its maximum")
    assert all(k.level == 0 for name, k in found.items() if name != "audit_log.id")
    # the alert's own audit row takes the next value of the sequence; at 96 %: critical, once
    with pg_store.begin() as conn:
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), :v)"),
                     {"v": int((2**31 - 1) * 0.96)})
    assert levels(check_keys(pg_store, cfg, host="pam1"))["audit_log.id"] == \
        (2, "Primary key near its maximum")
    assert levels(check_keys(pg_store, cfg, host="pam1"))["audit_log.id"] == (2, None)
    assert notes(pg_store) == ["Primary key audit_log.id at 90.0 % of its maximum",
                               "Primary key audit_log.id at 96.0 % of its maximum"]
    with Session(pg_store) as db:
        ids = db.exec(select(AuditLog.id).order_by(col(AuditLog.id))).all()
    assert ids[-1] > (2**31 - 1) * 0.96  # the audit log really wrote near the maximum


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_backup_configured_and_fresh(backend, request, tmp_path):
    store = request.getfixturevalue(backend)
    outside = tmp_path / "elsewhere.dump"
    outside.write_bytes(b"x" * 10)
    backups = tmp_path / "backups"
    now = datetime.now(UTC)

    def look(**settings) -> tuple[str | None, str | None]:
        report = check_backup(store, MonitorSettings(**settings), host="pam1", now=now)
        return report.problem, report.alert

    configured = {"backup_dir": str(backups), "backup_pattern": "*.dump", "backup_max_age_hours": 26}
    assert look() == ("unconfigured", "Backup not fresh")
    assert look(**configured) == ("missing_dir", "Backup not fresh")
    backups.mkdir()
    (backups / "empty.dump").write_bytes(b"")
    (backups / "notes.txt").write_bytes(b"not a backup")
    (backups / "link.dump").symlink_to(outside)  # links are not followed
    assert look(**configured) == ("no_file", "Backup not fresh")
    old = backups / "pamflow-1.dump"
    old.write_bytes(b"backup")
    stamp = (now - timedelta(hours=30)).timestamp()
    os.utime(old, (stamp, stamp))
    assert look(**configured) == ("stale", "Backup not fresh")
    assert look(**configured) == ("stale", None)  # once, until solved
    (backups / "pamflow-2.dump").write_bytes(b"backup")
    assert look(**configured) == (None, None)
    assert notes(store) == ["Backup not fresh on pam1: unconfigured", "Backup not fresh on pam1: missing_dir",
                            "Backup not fresh on pam1: no_file", "Backup not fresh on pam1: stale"]
    with Session(store) as db:
        actions = db.exec(select(AuditLog.action)
                          .where(col(AuditLog.action).startswith("monitor.backup"))).all()
    assert actions[-1] == "monitor.backup.recovered"
    with Session(store) as db:
        body = db.exec(select(Notification.body).where(col(Notification.subject).endswith("stale"))).one()
    assert "pamflow-1.dump is 30.0 h old" in body


T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def run(name: str, robot: str, state: str, expected: datetime, started: datetime | None = None,
        dep: str = "d1") -> RunFact:
    return RunFact(str(uuid.uuid4()), name, robot, dep, state, state.title(), expected, started)


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_schedule_problems_from_facts(backend, request):
    store = request.getfixturevalue(backend)
    cfg = MonitorSettings(schedule_late_minutes=10, schedule_stuck_minutes=60)
    robots = [ScheduledRobot("backup-robot", "d1", False,
                             tuple(T - timedelta(minutes=m) for m in (70, 40, 5))),
              ScheduledRobot("paused-robot", "d2", True, (T - timedelta(minutes=30),))]
    runs = [run("on-time", "backup-robot", "COMPLETED", T - timedelta(minutes=70)),
            run("waiting", "backup-robot", "SCHEDULED", T - timedelta(minutes=30), dep="d3"),
            run("fresh", "backup-robot", "SCHEDULED", T - timedelta(minutes=5)),
            run("hung", "backup-robot", "RUNNING", T - timedelta(hours=3), T - timedelta(hours=3)),
            run("died", "backup-robot", "CRASHED", T - timedelta(hours=1))]
    problems = find_problems(robots, runs, T, cfg)
    assert sorted((p.kind, p.run, p.expected) for p in problems) == sorted([
        ("late", "waiting", T - timedelta(minutes=30)),
        ("missing", None, T - timedelta(minutes=40)),  # fire time without a run
        ("stuck", "hung", T - timedelta(hours=3)),
        ("crashed", "died", T - timedelta(hours=1))])
    first = check_schedules(store, robots, runs, T, cfg)
    again = check_schedules(store, robots, runs, T + timedelta(minutes=1), cfg)
    assert len(first.new) == 4 and again.new == [] and len(again.problems) == 4
    assert len(notes(store, "Scheduled robot problem")) == 1
    with Session(store) as db:
        body = db.exec(select(Notification.body)).one()
    assert "missing: backup-robot, expected 2026-03-01 11:20 UTC (no run was created)" in body


@pytest.fixture
def crafted(prefect_client_sync):
    """Two deployments of a flow on the shared Prefect server: robot A (no schedule) with a
    late, a stuck and a crashed run; robot B with a yearly cron more than 100 days ahead,
    so the server's scheduler never creates its runs."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.states import Crashed, Running, Scheduled

    client = prefect_client_sync
    tag = uuid.uuid4().hex[:8]
    flow_id = client.create_flow_from_name(f"monitor-schedule-test-{tag}")
    robot_a = client.create_deployment(flow_id=flow_id, name=f"robot-a-{tag}")
    ahead = datetime.now(UTC) + timedelta(days=150)
    fire = datetime(ahead.year, ahead.month, 1, tzinfo=UTC)
    robot_b = client.create_deployment(
        flow_id=flow_id, name=f"robot-b-{tag}",
        schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron=f"0 0 1 {fire.month} *",
                                                                  timezone="UTC"), active=True)])
    now = datetime.now(UTC)
    late = client.create_flow_run_from_deployment(
        robot_a, state=Scheduled(scheduled_time=now - timedelta(hours=1)), name=f"late-{tag}")
    stuck = client.create_flow_run_from_deployment(robot_a, name=f"stuck-{tag}")
    client.set_flow_run_state(stuck.id, Running(), force=True)
    crashed = client.create_flow_run_from_deployment(robot_a, name=f"crashed-{tag}")
    client.set_flow_run_state(crashed.id, Crashed(), force=True)
    yield {"tag": tag, "a": f"robot-a-{tag}", "b": f"robot-b-{tag}", "fire": fire,
           "runs": [late.id, stuck.id, crashed.id]}
    for run_id in (late.id, stuck.id, crashed.id):
        client.delete_flow_run(run_id)
    client.delete_deployment(robot_a)
    client.delete_deployment(robot_b)


def test_platform_monitor_reads_the_prefect_api(store, tmp_path, prefect_server, crafted,
                                                prefect_client_sync):
    from blocks.monitor_thresholds import MonitorThresholdsBlock
    from flows.monitors import platform_monitor
    from tasks.monitors import check_schedule

    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "pamflow.dump").write_bytes(b"backup")
    block = f"monitor-platform-{crafted['tag']}"
    MonitorThresholdsBlock(backup_dir=str(backups), schedule_stuck_minutes=0.001).save(block)
    time.sleep(0.2)  # the stuck run has been Running for longer than 0.06 s

    result = platform_monitor(settings=block)
    mine = sorted(line.split(",")[0] + line.split(",")[2].split(" (")[0]
                  for line in result["schedule_problems"] if crafted["a"] in line)
    assert mine == [f"crashed: {crafted['a']} run crashed-{crafted['tag']}",
                    f"late: {crafted['a']} run late-{crafted['tag']}",
                    f"stuck: {crafted['a']} run stuck-{crafted['tag']}"]
    assert result["backup"] == "ok" and result["keys"]["audit_log.id"] < 0.01
    assert not any(crafted["b"] in line for line in result["schedule_problems"])
    assert len([a for a in result["alerts"] if crafted["a"] in a]) == 3
    assert platform_monitor(settings=block)["alerts"] == []  # each problem once

    # robot B's fire time has passed without a run: missing, with the robot and the time
    settings = MonitorThresholdsBlock.load(block).to_settings()
    later = check_schedule.fn(settings, now=crafted["fire"] + timedelta(minutes=11))
    missing = [p for p in later.new if p.robot == crafted["b"]]
    assert [(p.kind, p.expected) for p in missing] == [("missing", crafted["fire"])]
    body = "\n".join(n for n in notes(store, "Scheduled robot problem"))
    assert crafted["a"] in body

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    runs = prefect_client_sync.read_flow_runs(flow_run_filter=FlowRunFilter(
        name=FlowRunFilterName(any_=[f"late-{crafted['tag']}"])))
    assert runs[0].state_type.value == "SCHEDULED"  # the monitor only reads
