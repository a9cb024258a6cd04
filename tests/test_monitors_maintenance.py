"""Maintenance mode check: devices enter and leave their maintenance windows on time
(SQLite and PostgreSQL), a device put in maintenance by hand stays there, the
expired-password robot skips devices in maintenance, the CLI refuses bad windows, and the
flow schedules its next run for the next window boundary on the real Prefect server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import AuditLog, Credential, Device, MaintenanceWindow
from pamflow.monitors.maintenance import apply_windows
from pamflow.vault import credential_aad, vault

T0 = datetime(2026, 4, 1, 22, 0, tzinfo=UTC)
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def devices(engine, *names: str, maintenance: bool = False) -> dict[str, int]:
    out = {}
    with Session(engine) as db:
        for name in names:
            d = Device(name=name, address=f"{name}.example.test", maintenance_mode=maintenance)
            db.add(d)
            db.flush()
            out[name] = d.id
        db.commit()
    return out


def window(engine, device_id: int, start: datetime, end: datetime) -> None:
    with Session(engine) as db:
        db.add(MaintenanceWindow(device_id=device_id, starts_at=start, ends_at=end, reason="patch"))
        db.commit()


def modes(engine) -> dict[str, bool]:
    with Session(engine) as db:
        return {d.name: d.maintenance_mode for d in db.exec(select(Device))}


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_devices_enter_and_leave_their_windows_on_time(backend, request):
    engine = request.getfixturevalue(backend)
    ids = devices(engine, "db1", "web1", "web2")
    manual = devices(engine, "by-hand", maintenance=True)
    h = timedelta(hours=1)
    window(engine, ids["db1"], T0, T0 + 2 * h)
    window(engine, ids["web1"], T0 + h, T0 + 3 * h)
    window(engine, ids["web1"], T0 + 3 * h, T0 + 4 * h)  # back to back: stays in
    window(engine, manual["by-hand"], T0, T0 + h)

    def at(t: datetime) -> tuple[list[str], list[str], datetime | None]:
        report = apply_windows(engine, t)
        return report.entered, report.left, report.next_change

    assert at(T0 - h) == ([], [], T0)
    assert at(T0) == (["db1"], [], T0 + h)  # at the start, exactly
    assert at(T0 + h) == (["web1"], [], T0 + 2 * h)  # by-hand's window ended: it stays in
    assert modes(engine) == {"db1": True, "web1": True, "web2": False, "by-hand": True}
    assert at(T0 + 2 * h) == ([], ["db1"], T0 + 3 * h)
    assert at(T0 + 3 * h) == ([], [], T0 + 4 * h)
    assert at(T0 + 4 * h) == ([], ["web1"], None)
    assert at(T0 + 4 * h) == ([], [], None)
    assert modes(engine) == {"db1": False, "web1": False, "web2": False, "by-hand": True}
    with Session(engine) as db:
        actions = db.exec(select(AuditLog.action, AuditLog.entity_id)
                          .where(col(AuditLog.action).startswith("device.maintenance"))
                          .order_by(col(AuditLog.id))).all()
    assert [(a, int(e)) for a, e in actions] == [
        ("device.maintenance_enter", ids["db1"]), ("device.maintenance_enter", ids["web1"]),
        ("device.maintenance_leave", ids["db1"]), ("device.maintenance_leave", ids["web1"])]


def test_the_expired_password_robot_skips_devices_in_maintenance(store, monkeypatch):
    from pamflow.credentials.schedule import queue_due_changes

    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    vault()  # opened before the session holds SQLite's write lock
    ids = devices(store, "in-window", "working")
    now = datetime.now(UTC)
    window(store, ids["in-window"], now - timedelta(minutes=5), now + timedelta(hours=1))
    with Session(store) as db:
        for name, device_id in ids.items():
            cred = Credential(device_id=device_id, username=f"svc-{name}", auto_change=True,
                              expires_at=now - timedelta(days=1))
            db.add(cred)
            db.flush()
            cred.secret = vault().encrypt("Old-Secret-1234", credential_aad(cred.id, device_id, "secret"))
            db.add(cred)
        db.commit()
    assert apply_windows(store, now).entered == ["in-window"]
    due = queue_due_changes(store, now=now)
    assert [d.device for d in due] == ["working"]


@pytest.mark.parametrize("args, reason", [
    (["--start", "now", "--end", "-1h"], "must end after it starts"),
    (["--start", "now", "--end", "+400d"], "at most 366 days"),
    (["--start", "now", "--end", "+1h", "--reason", "x" * 300], "at most 200 characters"),
    (["--start", "now", "--end", "+1h", "--reason", "two\nlines"], "one line"),
    (["--start", "yesterday-ish", "--end", "+1h"], "--start"),
])
def test_cli_refuses_bad_windows_and_writes_nothing(store, args, reason):
    devices(store, "srv")
    out = cli("monitors", "maintenance-add", "srv", *args)
    assert out.exit_code == 2 and reason in out.output and "Traceback" not in out.output
    with Session(store) as db:
        assert db.exec(select(MaintenanceWindow)).all() == []


def test_cli_adds_and_lists_windows(store):
    devices(store, "srv")
    assert cli("monitors", "maintenance-add", "nope", "--start", "now", "--end", "+1h").exit_code == 1
    made = cli("monitors", "maintenance-add", "srv", "--start", "+1h", "--end", "+2h",
               "--reason", "kernel update", "--json")
    assert made.exit_code == 0, made.output
    row = json.loads(made.output)
    assert row["device"] == "srv" and row["reason"] == "kernel update"
    listed = [json.loads(line) for line in cli("monitors", "maintenance-list", "--json").output.splitlines()]
    assert [(w["device"], w["maintenance_mode"]) for w in listed] == [("srv", False)]
    assert "kernel update" in cli("monitors", "maintenance-list").output


def test_the_flow_schedules_a_run_for_the_next_boundary(store, prefect_server, prefect_client_sync):
    from flows.monitors import maintenance_mode_check
    from tasks.monitors import schedule_next_check

    ids = devices(store, "edge")
    now = datetime.now(UTC)
    window(store, ids["edge"], now - timedelta(minutes=1), now + timedelta(minutes=20))
    result = maintenance_mode_check()
    assert result["entered"] == ["edge"] and result["in_maintenance"] == 1
    assert datetime.fromisoformat(result["next_change"]) == now + timedelta(minutes=20)
    assert result["scheduled_run"] is None  # run outside a deployment: nothing to schedule

    # in a deployment, the boundary gets one run, however many runs ask for it
    flow_id = prefect_client_sync.create_flow_from_name("maintenance-mode-check")
    deployment_id = prefect_client_sync.create_deployment(
        flow_id=flow_id, name=f"maintenance-test-{uuid.uuid4().hex[:6]}")
    boundary = now + timedelta(minutes=20)
    first = schedule_next_check.fn(str(deployment_id), boundary)
    second = schedule_next_check.fn(str(deployment_id), boundary)
    assert first is not None and first == second
    assert schedule_next_check.fn(str(deployment_id), now + timedelta(hours=3)) is None  # hourly run's
    run = prefect_client_sync.read_flow_run(uuid.UUID(first))
    assert run.state_type.value == "SCHEDULED"
    assert abs((run.expected_start_time - boundary).total_seconds()) <= 2
    prefect_client_sync.delete_flow_run(run.id)
    prefect_client_sync.delete_deployment(deployment_id)
