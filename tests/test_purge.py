"""The data archiver, log retention, warehouse purge and conciliation on SQLite and
PostgreSQL with tens of thousands of real rows: what is kept, what goes (into archive
files read back and compared), bounded batches, per-tenant retention, a SIGKILL mid-purge
and the resumed run, and the audit log never moved unless sealed."""

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

from pamflow import audit_seal
from pamflow.models import ArchiveBatch, SystemParameter, utcnow
from pamflow.purge import (
    RetentionError,
    RetentionSettings,
    archive_expired,
    conciliate,
    purge_warehouse,
    remove_orphans,
    with_parameters,
)
from pamflow.purge import archive as archive_files
from pamflow.vault import Vault
from tests.purge_data import count, seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request):
    return request.getfixturevalue("store" if request.param == "sqlite" else "pg_store")


def _params(engine, **values):
    with Session(engine) as db:
        for k, v in values.items():
            db.merge(SystemParameter(key=k.replace("__", "."), value=str(v)))
        db.commit()


def _archived_ids(root: Path, engine, dataset: str, table: str) -> list[int]:
    with Session(engine) as db:
        paths = db.exec(select(ArchiveBatch.path).where(ArchiveBatch.dataset == dataset)).all()
    return [row["id"] for p in paths for t, row in archive_files.read(root / p) if t == table]


def test_archiver_moves_only_expired_rows_per_tenant(any_store, tmp_path):
    engine = any_store
    now = utcnow()
    seed(engine, now=now)
    _params(engine, logretentiondays=90, logretentiondays__acme=30, retention__audit_log_days=100)
    with Session(engine) as db:
        settings = with_parameters(db, RetentionSettings(archive_dir=tmp_path / "arch",
                                                         batch_size=300))
    assert settings.log_days("acme") == 30 and settings.log_days("globex") == 90

    def expired_sessions(tenant, days):
        return count(engine, "session s JOIN device d ON d.id = s.device_id",
                     f"d.tenant = '{tenant}' AND s.status <> 'active' AND s.started_at < "
                     f"'{(now - timedelta(days=days)).strftime('%Y-%m-%d %H:%M:%S')}'")

    before = {t: count(engine, "session") for t in ("all",)}
    want_acme, want_globex = expired_sessions("acme", 30), expired_sessions("globex", 90)
    events_before = count(engine, "session_event")
    dry = archive_expired(engine, settings, dry_run=True, now=now)
    assert count(engine, "session") == before["all"]  # a dry run changes nothing
    assert not (tmp_path / "arch").exists()
    by = {(r.dataset, r.tenant): r for r in dry}
    assert by[("session", "acme")].rows == want_acme > 0
    assert by[("session", "globex")].rows == want_globex > 0

    done = archive_expired(engine, settings, now=now)
    got = {(r.dataset, r.tenant): r for r in done}
    for key, r in by.items():  # the dry run said exactly what went
        assert got[key].rows == r.rows, key
        assert got[key].child_rows == r.child_rows, key
    assert expired_sessions("acme", 30) == 0 and expired_sessions("globex", 90) == 0
    # what is kept: active sessions whatever their age, and recent ones
    assert count(engine, "session", "status = 'active'") == 2000 // 50
    assert count(engine, "session") == before["all"] - want_acme - want_globex
    moved_events = got[("session", "acme")].child_rows + got[("session", "globex")].child_rows
    assert count(engine, "session_event") == events_before - moved_events
    assert count(engine, "operation", "state = 'queued'") == 4000 // 3 + (4000 % 3 > 2)
    assert count(engine, "notification", "state = 'queued'") == 750  # never expire
    assert count(engine, "webhook_delivery", "delivered_at IS NULL") == 600
    # bounded batches, each one archived, read back and matching the rows that went
    with Session(engine) as db:
        batches = db.exec(select(ArchiveBatch)).all()
    assert batches and max(b.rows for b in batches) <= 300
    archived = _archived_ids(tmp_path / "arch", engine, "session", "session")
    assert len(archived) == len(set(archived)) == want_acme + want_globex
    assert count(engine, "session", f"id IN ({','.join(map(str, archived))})") == 0
    # the audit log was not touched: no seal covers it
    audit_res = got[("audit_log", None)]
    assert audit_res.rows == 0 and audit_res.kept_unsealed > 0
    assert count(engine, "audit_log", "action = 'thing.done'") == 2000
    # conciliation: archive and store agree
    result = conciliate(engine, settings)
    assert result.ok, result.problems
    assert result.batches == len(batches)
    # a second run finds nothing more
    again = archive_expired(engine, settings, now=now)
    assert sum(r.rows for r in again) == 0


def test_audit_log_moves_by_sealed_block_and_still_verifies(store, tmp_path):
    engine = store
    now = utcnow()
    seed(engine, sessions=10, operations=10, notifications=10, deliveries=10,
         audit_rows=12_000, now=now)
    box = Vault()
    seals = audit_seal.seal(engine, box, block_rows=1000)
    assert len(seals) == 12 and {s.count for s in seals} == {1000}
    settings = RetentionSettings(archive_dir=tmp_path / "arch", audit_log_days=100)
    res = [r for r in archive_expired(engine, settings, now=now) if r.dataset == "audit_log"][0]
    # only whole blocks whose newest row is past 100 days: 5 blocks of the 200-day spread
    assert res.rows == res.batches * 1000 and res.batches >= 5
    assert 0 < res.kept_unsealed < 1000  # the rest of the expired rows share a newer block
    with Session(engine) as db:
        keys = audit_seal.public_keys(db, box)
        check = audit_seal.verify_log(db, keys=keys)
    assert check.intact, check.reason
    assert check.archived_seals == res.batches
    assert conciliate(engine, settings).ok


def test_settings_refuse_bad_values(store):
    with pytest.raises(RetentionError, match="batch_size"):
        RetentionSettings(archive_dir=Path("/tmp/x"), batch_size=0)
    with pytest.raises(RetentionError, match="absolute"):
        RetentionSettings(archive_dir=Path("relative/dir"))
    _params(store, logretentiondays="ninety")
    with Session(store) as db, pytest.raises(RetentionError, match="logretentiondays"):
        with_parameters(db)
    _params(store, logretentiondays="90", retention__bogus="1")
    with Session(store) as db, pytest.raises(RetentionError, match="not a retention setting"):
        with_parameters(db)
    with pytest.raises(RetentionError, match="unknown dataset"):
        archive_expired(store, RetentionSettings(archive_dir=Path("/tmp/x")),
                        datasets=("../etc",))


def test_hostile_tenant_names_stay_inside_the_archive(tmp_path):
    for name in ("../../etc", "/abs", "a" * 300, "x\x00y", "é/..", ".."):
        s = archive_files.slug(name)
        assert "/" not in s and s not in ("..", ".") and len(s) <= 64
    with pytest.raises(RetentionError, match="leaves"):
        archive_files.resolve(tmp_path, "../outside.jsonl.gz")


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pamflow import db, faults
    from pamflow.models import utcnow
    from pamflow.purge import RetentionSettings, archive_expired
    from datetime import datetime
    hits = {"n": 0}
    def maybe_die():
        hits["n"] += 1
        if hits["n"] == 4:
            os.kill(os.getpid(), signal.SIGKILL)
    faults.on(sys.argv[1], maybe_die)
    settings = RetentionSettings(archive_dir=Path(sys.argv[2]), batch_size=200)
    archive_expired(db.store(), settings, now=datetime.fromisoformat(sys.argv[3]),
                    datasets=("session", "operation"))
""")


@pytest.mark.parametrize("point", ["purge.archive_written", "purge.rows_deleted",
                                   "purge.batch_committed"])
def test_sigkill_mid_purge_then_resume_loses_and_duplicates_nothing(any_store, tmp_path, point):
    engine = any_store
    now = utcnow()
    seed(engine, sessions=3000, operations=3000, notifications=10, deliveries=10,
         audit_rows=10, now=now)
    ids_before = {r[0] for r in engine.connect().execute(sa.text("SELECT id FROM session"))}
    arch = tmp_path / "arch"
    proc = subprocess.run([sys.executable, "-c", _KILLER, point, str(arch), now.isoformat()],
                          cwd=ROOT, env=os.environ.copy(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    settings = RetentionSettings(archive_dir=arch, batch_size=200, orphan_grace_s=0)
    # consistent right after the crash: every archived row is gone, every other row is there
    with Session(engine) as db:
        n_batches = len(db.exec(select(ArchiveBatch)).all())
    assert n_batches == (4 if point == "purge.batch_committed" else 3)
    mid = conciliate(engine, settings)
    orphans = [p for p in mid.problems if p.batch_id is None]
    assert len(orphans) == (0 if point == "purge.batch_committed" else 1)
    assert all(p.batch_id is None for p in mid.problems)  # recorded batches all hold
    gone = set(_archived_ids(arch, engine, "session", "session"))
    # (the orphan's rows are also in its file, but still in the store: count recorded ones)
    with Session(engine) as db:
        recorded = db.exec(select(ArchiveBatch.path).where(ArchiveBatch.dataset == "session")).all()
    in_records = {row["id"] for p in recorded for t, row in archive_files.read(arch / p)
                  if t == "session"}
    remaining = {r[0] for r in engine.connect().execute(sa.text("SELECT id FROM session"))}
    assert in_records.isdisjoint(remaining) and in_records | remaining == ids_before
    # resume: the orphan is removed, the rest moved, nothing archived twice
    archive_expired(engine, settings, now=now, datasets=("session", "operation"))
    assert conciliate(engine, settings).ok
    gone = _archived_ids(arch, engine, "session", "session")
    remaining = {r[0] for r in engine.connect().execute(sa.text("SELECT id FROM session"))}
    assert len(gone) == len(set(gone)) and set(gone) | remaining == ids_before
    assert not set(gone) & remaining
    assert remove_orphans(engine, settings) == []


def test_warehouse_purge_deletes_old_archive_files_but_keeps_audit_archives(store, tmp_path):
    engine = store
    now = utcnow()
    seed(engine, sessions=400, operations=10, notifications=10, deliveries=10,
         audit_rows=3000, now=now)
    audit_seal.seal(engine, Vault(), block_rows=500)
    settings = RetentionSettings(archive_dir=tmp_path / "a", batch_size=100, audit_log_days=30,
                                 warehouse_days=10)
    archive_expired(engine, settings, now=now)
    with Session(engine) as db:
        n_audit = len(db.exec(select(ArchiveBatch).where(ArchiveBatch.dataset == "audit_log")).all())
        n_other = len(db.exec(select(ArchiveBatch).where(ArchiveBatch.dataset != "audit_log")).all())
    assert n_audit and n_other
    assert purge_warehouse(engine, settings, now=now).expired_batches == 0  # not old enough
    later = now + timedelta(days=11)
    dry = purge_warehouse(engine, settings, now=later, dry_run=True)
    assert dry.expired_batches == n_other
    res = purge_warehouse(engine, settings, now=later)
    assert res.expired_batches == n_other and res.missing_files == 0
    left = list(archive_files.files(tmp_path / "a"))
    assert len(left) == n_audit and all("audit_log" in str(p) for p in left)
    assert conciliate(engine, settings).ok
    with Session(engine) as db:
        check = audit_seal.verify_log(db, keys=audit_seal.public_keys(db, Vault()))
    assert check.intact, check.reason


def test_conciliation_finds_changed_missing_and_orphan_files(store, tmp_path):
    engine = store
    now = utcnow()
    seed(engine, sessions=600, operations=10, notifications=10, deliveries=10, audit_rows=10,
         now=now)
    settings = RetentionSettings(archive_dir=tmp_path / "a", batch_size=100, orphan_grace_s=0)
    archive_expired(engine, settings, now=now)
    with Session(engine) as db:
        batches = db.exec(select(ArchiveBatch).order_by(ArchiveBatch.id)).all()
    first, second = (tmp_path / "a" / batches[0].path), (tmp_path / "a" / batches[1].path)
    first.write_bytes(first.read_bytes()[:-8] + b"\0" * 8)
    second.unlink()
    (tmp_path / "a" / "stray.jsonl.gz").write_bytes(b"x")
    result = conciliate(engine, settings)
    problems = {p.batch_id: p.problem for p in result.problems}
    assert "changed" in problems[batches[0].id]
    assert "missing" in problems[batches[1].id]
    assert "no archive record" in problems[None]
