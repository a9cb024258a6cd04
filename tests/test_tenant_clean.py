"""Tenant clean: a removed tenant's data is deleted after its grace period, in batches,
audited; other tenants untouched; a SIGKILL midway leaves a consistent store the next run
finishes; a restored tenant is never cleaned; the robot runs for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import AuditLog, SystemParameter, Tenant, utcnow
from pamflow.purge import (
    RetentionError,
    RetentionSettings,
    archive_expired,
    clean_tenants,
    remove_tenant,
    restore_tenant,
)
from tests.purge_data import count, seed

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request):
    return request.getfixturevalue("store" if request.param == "sqlite" else "pg_store")


def _tenant_rows(engine, tenant):
    dev = f"(SELECT id FROM device WHERE tenant = '{tenant}')"
    return {
        "device": count(engine, "device", f"tenant = '{tenant}'"),
        "session": count(engine, "session", f"device_id IN {dev}"),
        "session_event": count(engine, "session_event",
                               f"session_id IN (SELECT id FROM session WHERE device_id IN {dev})"),
        "operation": count(engine, "operation", f"device_id IN {dev}"),
        "credential": count(engine, "credential", f"device_id IN {dev}"),
    }


def _fk_orphans(engine) -> int:
    return (count(engine, "session_event", "session_id NOT IN (SELECT id FROM session)")
            + count(engine, "session", "device_id NOT IN (SELECT id FROM device)")
            + count(engine, "credential", "device_id NOT IN (SELECT id FROM device)")
            + count(engine, "operation", "device_id NOT IN (SELECT id FROM device)"))


def test_removed_tenant_is_cleaned_after_its_grace_period(any_store, tmp_path):
    engine = any_store
    now = utcnow()
    seed(engine, sessions=3000, operations=3000, notifications=10, deliveries=10,
         audit_rows=10, now=now)
    settings = RetentionSettings(archive_dir=tmp_path / "a", batch_size=500)
    archive_expired(engine, settings, datasets=("session",), now=now)  # acme has archives
    globex_before = _tenant_rows(engine, "globex")
    assert _tenant_rows(engine, "acme")["session_event"] > 0
    remove_tenant(engine, "acme", actor="cli:test", now=now - timedelta(days=30))
    assert clean_tenants(engine, settings, now=now) == []  # still in its grace period
    later = now + timedelta(days=31)
    dry = clean_tenants(engine, settings, now=later, dry_run=True)
    assert dry[0].rows["session_event"] == _tenant_rows(engine, "acme")["session_event"]
    assert _tenant_rows(engine, "acme")["device"] == 1  # a dry run deletes nothing
    done = clean_tenants(engine, settings, now=later)
    assert done[0].finished and done[0].rows == dry[0].rows and done[0].archive_files > 0
    assert set(_tenant_rows(engine, "acme").values()) == {0}
    assert _tenant_rows(engine, "globex") == globex_before
    assert _fk_orphans(engine) == 0
    assert not list((tmp_path / "a" / "session" / "acme").rglob("*.jsonl.gz"))
    assert list((tmp_path / "a" / "session" / "globex").rglob("*.jsonl.gz"))
    with Session(engine) as db:
        batches = db.exec(select(AuditLog).where(AuditLog.action == "tenant.clean_batch")).all()
        assert all(b.detail["rows"] <= 500 for b in batches) and len(batches) >= 6
        assert db.exec(select(Tenant).where(Tenant.name == "acme")).one().cleaned_at is not None
    assert clean_tenants(engine, settings, now=later + timedelta(days=1)) == []


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime
    import pamflow.audit as audit_mod
    from pamflow import db
    from pamflow.purge import RetentionSettings, clean_tenants
    real = audit_mod.record
    hits = {"n": 0}
    def record(*a, **k):
        hits["n"] += 1
        if hits["n"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    import pamflow.purge.tenants as t
    t.audit.record = record
    clean_tenants(db.store(), RetentionSettings(batch_size=200),
                  now=datetime.fromisoformat(sys.argv[1]))
""")


def test_sigkill_mid_clean_leaves_a_consistent_store_and_resumes(store):
    engine = store
    now = utcnow()
    seed(engine, sessions=2000, operations=2000, notifications=10, deliveries=10,
         audit_rows=10, now=now)
    remove_tenant(engine, "acme", actor="t", now=now - timedelta(days=61))
    globex_before = _tenant_rows(engine, "globex")
    acme_before = _tenant_rows(engine, "acme")
    proc = subprocess.run([sys.executable, "-c", _KILLER, now.isoformat()], cwd=ROOT,
                          env=os.environ.copy(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    mid = _tenant_rows(engine, "acme")
    assert mid["session_event"] < acme_before["session_event"] and mid["device"] == 1
    assert _fk_orphans(engine) == 0
    done = clean_tenants(engine, RetentionSettings(batch_size=200), now=now)
    assert done[0].finished
    assert set(_tenant_rows(engine, "acme").values()) == {0}
    assert _tenant_rows(engine, "globex") == globex_before and _fk_orphans(engine) == 0


def test_restored_tenant_is_never_cleaned_and_cli(store):
    engine = store
    seed(engine, sessions=20, operations=20, notifications=10, deliveries=10, audit_rows=5)
    out = runner.invoke(app, ["tenant", "remove", "acme"])
    assert out.exit_code == 0 and "grace period" in out.output
    out = runner.invoke(app, ["tenant", "list", "--json"])
    assert '"tenant": "acme", "removed_at": "' in out.output
    out = runner.invoke(app, ["tenant", "restore", "acme"])
    assert out.exit_code == 0
    assert clean_tenants(engine, RetentionSettings(tenant_grace_days=0),
                         now=utcnow() + timedelta(days=1)) == []
    assert _tenant_rows(engine, "acme")["device"] == 1
    with pytest.raises(RetentionError, match="not removed"):
        restore_tenant(engine, "acme", actor="t")
    with Session(engine) as db:
        actions = [a for a in db.exec(select(AuditLog.action)).all() if a.startswith("tenant.")]
    assert actions == ["tenant.removed", "tenant.restored"]


def test_tenant_clean_robot_runs_for_real(store, tmp_path, prefect_server):
    from flows.purge import tenant_clean

    seed(store, sessions=200, operations=200, notifications=10, deliveries=10, audit_rows=5)
    with Session(store) as db:
        db.merge(SystemParameter(key="retention.tenant_grace_days", value="0"))
        db.merge(SystemParameter(key="retention.archive_dir", value=str(tmp_path / "a")))
        db.commit()
    remove_tenant(store, "globex", actor="t", now=utcnow() - timedelta(seconds=5))
    dry = tenant_clean(dry_run=True)
    assert dry[0]["tenant"] == "globex" and dry[0]["dry_run"]
    done = tenant_clean()
    assert done[0]["finished"] and _tenant_rows(store, "globex")["device"] == 0
    assert _tenant_rows(store, "acme")["device"] == 1
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tenant WHERE cleaned_at IS NOT NULL")
                            ).scalar_one() == 1
