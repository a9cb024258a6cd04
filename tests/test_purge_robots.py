"""The data purge robots run for real against the shared Prefect server (artifacts
published, no row content in them), the CLI (``pamflow purge run --dry-run --json`` …),
idle session deletion, and hostile CLI input."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import ArchiveBatch, AuditLog, SystemParameter, utcnow
from pamflow.models import Session as ProxySession
from tests.purge_data import count, seed

runner = CliRunner()


def _artifacts(client, keys: list[str]) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return "\n".join(json.dumps([a.key, a.data, a.description], default=str) for a in arts)


def _archive_dir(engine, path):
    with Session(engine) as db:
        db.merge(SystemParameter(key="retention.archive_dir", value=str(path)))
        db.merge(SystemParameter(key="retention.batch_size", value="250"))
        db.commit()


def test_purge_robots_run_for_real(store, tmp_path, prefect_client_sync):
    from flows.purge import (
        data_archiver,
        idle_session_deletion,
        log_retention,
        warehouse_conciliation,
        warehouse_purge,
    )

    now = utcnow()
    seed(store, sessions=1500, operations=1500, notifications=1500, deliveries=1500,
         audit_rows=50, now=now)
    _archive_dir(store, tmp_path / "archive")
    sessions_before = count(store, "session")
    dry = log_retention(dry_run=True)
    assert count(store, "session") == sessions_before
    logs = log_retention()
    assert [r["rows"] for r in logs] == [r["rows"] for r in dry]
    assert sum(r["rows"] for r in logs if r["dataset"] == "session") > 0
    data = data_archiver()
    assert {r["dataset"] for r in data} == {"notification", "webhook_delivery", "audit_log"}
    assert sum(r["rows"] for r in data if r["dataset"] == "notification") > 0
    assert warehouse_conciliation()["problems"] == 0
    assert warehouse_purge()["expired_batches"] == 0  # nothing is five years old
    closed = idle_session_deletion()
    active_left = count(store, "session", "status = 'active'")
    assert closed and active_left == 0  # every seeded active session is days old
    with Session(store) as db:
        assert db.exec(select(ArchiveBatch)).first() is not None
        actions = set(db.exec(select(AuditLog.action)).all())
        s = db.exec(select(ProxySession).where(ProxySession.end_reason == "idle timeout")).first()
    assert {"purge.archived", "session.closed_idle"} <= actions
    assert s is not None and s.status == "finished"
    text = _artifacts(prefect_client_sync, ["data-archiver", "log-retention", "warehouse-purge",
                                            "warehouse-conciliation", "idle-session-deletion",
                                            "log-retention-progress"])
    assert "log-retention-progress" in text and "data-archiver" in text
    assert "ls 0" not in text  # never a row's content (the seeded session events)


def test_conciliation_robot_fails_on_a_changed_archive(store, tmp_path, prefect_server):
    from flows.purge import WarehouseMismatch, log_retention, warehouse_conciliation

    seed(store, sessions=600, operations=10, notifications=10, deliveries=10, audit_rows=10)
    _archive_dir(store, tmp_path / "archive")
    log_retention()
    with Session(store) as db:
        b = db.exec(select(ArchiveBatch)).first()
    f = tmp_path / "archive" / b.path
    f.write_bytes(f.read_bytes() + b"tampered")
    with pytest.raises(WarehouseMismatch, match="checksum"):
        warehouse_conciliation()


def test_cli_purge_run_dry_run_json_then_real(store, tmp_path):
    seed(store, sessions=800, operations=800, notifications=800, deliveries=800, audit_rows=20)
    _archive_dir(store, tmp_path / "archive")
    before = count(store, "session")
    out = runner.invoke(app, ["purge", "run", "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert {r["dataset"] for r in rows} == {"session", "operation", "notification",
                                            "webhook_delivery", "audit_log"}
    assert all(r["dry_run"] for r in rows) and count(store, "session") == before
    planned = {(r["dataset"], r["tenant"]): r["rows"] for r in rows}
    out = runner.invoke(app, ["purge", "run", "--json", "--dataset", "session",
                              "--tenant", "acme"])
    assert out.exit_code == 0, out.output
    done = [json.loads(line) for line in out.output.splitlines()]
    assert [(r["dataset"], r["tenant"]) for r in done] == [("session", "acme")]
    assert done[0]["rows"] == planned[("session", "acme")] > 0
    out = runner.invoke(app, ["purge", "conciliate", "--json"])
    assert out.exit_code == 0 and json.loads(out.output.splitlines()[0])["ok"] is True
    out = runner.invoke(app, ["purge", "run", "--dry-run"])
    assert out.exit_code == 0 and "dry run" in out.output
    out = runner.invoke(app, ["purge", "settings", "--json"])
    assert json.loads(out.output)["batch_size"] == 250


@pytest.mark.parametrize("args, reason", [
    (["purge", "run", "--dataset", "../../etc/passwd"], "unknown dataset"),
    (["purge", "run", "--dataset", "session; DROP TABLE session"], "unknown dataset"),
    (["purge", "run", "--tenant", "nobody' OR '1'='1"], "no tenant named"),
    (["purge", "run", "--tenant", "x" * 5000], "1-255"),
    (["purge", "run", "--tenant", "bad\udcff"], "UTF-8"),
    (["tenant", "remove", "default"], "cannot be removed"),
    (["tenant", "remove", "ghost\udcff"], "UTF-8"),
    (["tenant", "remove", "ghost"], "no tenant"),
    (["tenant", "remove", "a\x00b"], "printable"),
    (["tenant", "restore", "acme"], "is not removed"),
])
def test_cli_refuses_hostile_input_clearly(store, args, reason):
    seed(store, sessions=10, operations=10, notifications=10, deliveries=10, audit_rows=5)
    out = runner.invoke(app, args)
    assert out.exit_code == 2, out.output
    assert reason in out.output and "Traceback" not in out.output
    assert count(store, "session") == 10


def test_cli_refuses_a_bad_system_parameter(store):
    with Session(store) as db:
        db.merge(SystemParameter(key="retention.archive_dir", value="relative/path"))
        db.commit()
    out = runner.invoke(app, ["purge", "run", "--dry-run"])
    assert out.exit_code == 2 and "absolute" in out.output


def test_idle_sessions_closed_only_past_the_timeout(store):
    from pamflow.purge import RetentionSettings, close_idle_sessions

    now = utcnow()
    with Session(store) as db:
        old = ProxySession(status="active", started_at=now - timedelta(hours=2),
                           last_activity_at=now - timedelta(minutes=45))
        busy = ProxySession(status="active", started_at=now - timedelta(hours=2),
                            last_activity_at=now - timedelta(minutes=5))
        silent = ProxySession(status="active", started_at=now - timedelta(minutes=40))
        db.add_all([old, busy, silent])
        db.commit()
        ids = (old.id, busy.id, silent.id)
    closed = close_idle_sessions(store, RetentionSettings(idle_session_minutes=30), now=now)
    assert sorted(c.session_id for c in closed) == sorted([ids[0], ids[2]])
    with Session(store) as db:
        assert db.get(ProxySession, ids[1]).status == "active"
        assert db.get(ProxySession, ids[0]).end_reason == "idle timeout"
