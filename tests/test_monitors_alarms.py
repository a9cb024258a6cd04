"""Alarms: definitions create alarms from the system monitor's diagnostic values, closed
alarms are deleted after six months (SQLite and PostgreSQL), and the CLI refuses bad
definitions with the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import Alarm, AlarmDefinition, AuditLog, Notification
from pamflow.monitors.alarms import Reading, define, delete_closed, evaluate

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def test_definitions_open_and_close_alarms_over_their_duration(store):
    assert cli("monitors", "alarm-define", "cpu-busy", "--metric", "cpu_percent",
               "--condition", ">", "--threshold", "80", "--duration", "600",
               "--severity", "critical").exit_code == 0
    made = cli("monitors", "alarm-define", "ram", "--metric", "memory_percent",
               "--condition", ">=", "--threshold", "50", "--duration", "600", "--json")
    assert json.loads(made.output)["severity"] == "high"

    def run(at: float, cpu: float | None, cpu_since: float, memory: float):
        readings = {"memory_percent": Reading(memory, T0 + timedelta(seconds=at))}
        if cpu is not None:
            readings["cpu_percent"] = Reading(cpu, T0 + timedelta(seconds=cpu_since))
        report = evaluate(store, readings, T0 + timedelta(seconds=at), host="pam1")
        return report.opened, report.closed, report.open_now

    # the CPU reading averages the 10 minutes since the previous run: it holds for 600 s
    assert run(0, None, 0, 60) == ([], [], 0)
    assert run(600, 90, 0, 60) == (["cpu-busy", "ram"], [], 2)
    assert run(1200, 95, 600, 70) == ([], [], 2)  # still open: last value updated
    assert run(1800, 20, 1200, 40) == ([], ["cpu-busy", "ram"], 0)
    assert run(2100, 85, 1800, 55) == ([], [], 0)  # memory only 0 s, CPU 300 s: not yet
    assert run(2400, 85, 2100, 55) == (["cpu-busy"], [], 1)  # 600 s since 1800
    with Session(store) as db:
        alarms = db.exec(select(Alarm).order_by(col(Alarm.id))).all()
        notes = db.exec(select(Notification.subject)).all()
        actions = db.exec(select(AuditLog.action).where(col(AuditLog.action).startswith("alarm"))
                          .order_by(col(AuditLog.id))).all()
    assert [(a.name, a.state, a.value, a.last_value) for a in alarms] == [
        ("cpu-busy", "closed", 90, 20), ("ram", "closed", 60, 40), ("cpu-busy", "open", 85, 85)]
    assert notes == ["Alarm cpu-busy (critical) on pam1: cpu_percent 90.0",
                     "Alarm ram (high) on pam1: memory_percent 60.0",
                     "Alarm cpu-busy (critical) on pam1: cpu_percent 85.0"]
    assert actions == ["alarm_definition.create"] * 2 + ["alarm.open"] * 2 + ["alarm.close"] * 2 \
        + ["alarm.open"]
    listed = cli("monitors", "alarms", "--open", "--json")
    assert [json.loads(line)["name"] for line in listed.output.splitlines()] == ["cpu-busy"]
    assert "cpu-busy" in cli("monitors", "alarms").output


@pytest.mark.parametrize("args, reason", [
    (["x; DROP TABLE alarm", "--metric", "cpu_percent", "--threshold", "1"], "alarm name"),
    (["a" * 200, "--metric", "cpu_percent", "--threshold", "1"], "alarm name"),
    (["bad", "--metric", "disk_free_percent:/../etc", "--threshold", "1"], "metric must be"),
    (["bad", "--metric", "load_average", "--threshold", "1"], "metric must be"),
    (["bad", "--metric", "cpu_percent", "--threshold", "1", "--condition", "=="], "condition"),
    (["bad", "--metric", "cpu_percent", "--threshold", "1", "--severity", "urgent"], "severity"),
    (["bad", "--metric", "cpu_percent", "--threshold", "nan"], "percentage"),
    (["bad", "--metric", "cpu_percent", "--threshold", "1e309"], "percentage"),
    (["bad", "--metric", "cpu_percent", "--threshold", "1", "--duration", "-5"], "duration"),
])
def test_bad_definitions_are_refused_and_nothing_is_written(store, args, reason):
    out = cli("monitors", "alarm-define", *args)
    assert out.exit_code == 2 and reason in out.output and "Traceback" not in out.output
    with Session(store) as db:
        assert db.exec(select(AlarmDefinition)).all() == []
        assert db.exec(select(AuditLog)).all() == []


def test_a_duplicate_name_is_refused(store):
    args = ("monitors", "alarm-define", "dup", "--metric", "cpu_percent", "--threshold", "5")
    assert cli(*args).exit_code == 0
    again = cli(*args)
    assert again.exit_code == 2 and "exists" in again.output


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_closed_alarms_are_deleted_after_six_months_in_batches(backend, request):
    engine = request.getfixturevalue(backend)
    now = datetime.now(UTC)
    with Session(engine) as db:
        d = define(db, "disk", "disk_free_percent:/", "<", 10, 0, "high", "test")
        rows = [("closed", now - timedelta(days=200))] * 5 + [("closed", now - timedelta(days=150)),
                                                               ("open", None)]
        for state, closed in rows:
            db.add(Alarm(definition_id=d.id, name="disk", metric=d.metric, severity="high",
                         state=state, opened_at=now - timedelta(days=400), closed_at=closed,
                         value=5, last_value=5))
        db.commit()
    assert delete_closed(engine, now, batch=2) == 5
    assert delete_closed(engine, now, batch=2) == 0
    with Session(engine) as db:
        left = db.exec(select(Alarm.state)).all()
        audit_row = db.exec(select(AuditLog).where(AuditLog.action == "alarm.delete_closed")).one()
    assert sorted(left) == ["closed", "open"] and audit_row.detail["deleted"] == 5
