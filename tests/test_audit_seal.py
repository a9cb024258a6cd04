"""Tamper-proof log sealing: signed seals over the audit hash chain; an edited, deleted,
inserted or reordered row, a rewritten chain, a forged or removed seal and a replaced key
are each found (with the seal they break); the archiver keeps verification possible; the
tamper-proof-log robot seals, then raises the Audit trail notification when blocks break."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow import audit, audit_seal
from pamflow.cli import app
from pamflow.models import AuditSeal, AuditSealKey, Notification, utcnow
from pamflow.vault import Vault, VaultError
from tests.purge_data import write_audit

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request):
    return request.getfixturevalue("store" if request.param == "sqlite" else "pg_store")


def _sealed(engine, rows=1000, block=100):
    now = utcnow()
    write_audit(engine, rows, now.replace(year=now.year - 1), now)
    return audit_seal.seal(engine, Vault(), block_rows=block)


def _check(engine):
    with Session(engine) as db:
        return audit_seal.verify_log(db, keys=audit_seal.public_keys(db, Vault()))


def _sql(engine, *statements):
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s))


def test_sealed_log_verifies_and_each_tampering_is_found(any_store):
    engine = any_store
    made = _sealed(engine)
    assert [m.count for m in made] == [100] * 10 and made[-1].last_id == 1000
    ok = _check(engine)
    assert ok.intact and ok.seals == 10 and ok.sealed_rows == 1000 and ok.signatures_checked
    assert ok.unsealed_rows == 1  # the audit.sealed row the robot wrote

    # edited row
    _sql(engine, "UPDATE audit_log SET actor = 'mallory' WHERE id = 250")
    bad = _check(engine)
    assert (bad.broken_at, bad.seal_broken) == (250, 3) and "changed" in bad.reason
    _sql(engine, "UPDATE audit_log SET actor = 'test' WHERE id = 250")
    assert _check(engine).intact

    # reordered rows: two rows' contents swapped
    _sql(engine, "UPDATE audit_log SET entity_id = 'x' WHERE id = 420",
         "UPDATE audit_log SET entity_id = '419' WHERE id = 421",
         "UPDATE audit_log SET entity_id = '420' WHERE id = 420")
    assert _check(engine).intact is False


def test_deleted_rows_anywhere_are_found(store):
    engine = store
    _sealed(engine)
    _sql(engine, "DELETE FROM audit_log WHERE id = 555")
    bad = _check(engine)
    assert (bad.broken_at, bad.seal_broken) == (556, 6) and "prev_hash" in bad.reason


def test_deleted_newest_sealed_rows_are_found(store):
    engine = store
    _sealed(engine)
    _sql(engine, "DELETE FROM audit_log WHERE id > 990")
    bad = _check(engine)
    assert bad.seal_broken == 10 and "removed" in bad.reason


def test_inserted_row_and_rewritten_chain_are_found(store):
    engine = store
    _sealed(engine, rows=300, block=100)
    # an attacker rewrites row 150 and recomputes every hash after it: the chain holds,
    # the seal does not
    with Session(engine) as db:
        rows = db.exec(select(audit.AuditLog).order_by(audit.AuditLog.id)).all()
        prev = rows[148].hash
        for r in rows[149:]:
            if r.id == 150:
                r.detail = {"i": "forged"}
            r.prev_hash = prev
            r.hash = audit._row_digest(prev, r)
            prev = r.hash
            db.add(r)
        db.commit()
    bad = _check(engine)
    assert bad.seal_broken == 2 and "rewritten" in bad.reason and bad.broken_at == 200


def test_forged_removed_seals_and_replaced_key_are_found(store):
    engine = store
    _sealed(engine, rows=300, block=100)
    _sql(engine, "UPDATE audit_seal SET count = 99 WHERE number = 2")
    bad = _check(engine)
    assert bad.seal_broken == 2 and "signature" in bad.reason
    _sql(engine, "UPDATE audit_seal SET count = 100 WHERE number = 2")
    assert _check(engine).intact
    _sql(engine, "DELETE FROM audit_seal WHERE number = 2")
    bad = _check(engine)
    assert bad.seal_broken == 2 and "missing" in bad.reason
    # the key row swapped for an attacker's key: the vault cannot open it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate()
    with Session(engine) as db:
        row = db.exec(select(AuditSealKey)).one()
        row.public_key = audit_seal._b64(audit_seal._public_raw(other))
        db.add(row)
        db.commit()
        with pytest.raises(VaultError, match="replaced"):
            audit_seal.public_keys(db, Vault())


def test_seal_refuses_a_broken_chain(store):
    engine = store
    _sealed(engine, rows=50, block=100)
    write_audit(engine, 20, utcnow(), utcnow())
    _sql(engine, "UPDATE audit_log SET action = 'x' WHERE id = 60")
    with pytest.raises(audit_seal.SealError, match="row 60"):
        audit_seal.seal(engine, Vault())


def test_cli_verify_seal_and_public_key(store):
    engine = store
    write_audit(engine, 30, utcnow(), utcnow())
    out = runner.invoke(app, ["audit", "seal", "--block-rows", "10", "--json"])
    assert out.exit_code == 0, out.output
    assert [json.loads(x)["count"] for x in out.output.splitlines()] == [10, 10, 10]
    out = runner.invoke(app, ["audit", "verify"])
    assert out.exit_code == 0 and "3 seal(s) hold (signatures checked)" in out.output
    key = runner.invoke(app, ["audit", "seal-key"]).output.strip()
    out = runner.invoke(app, ["audit", "verify", "--json", "--public-key", key])
    assert json.loads(out.output)["intact"] is True
    _sql(engine, "DELETE FROM audit_log WHERE id = 15")
    out = runner.invoke(app, ["audit", "verify"])
    assert out.exit_code == 1
    assert "audit log broken at entry 16" in out.output and "breaks seal #2" in out.output
    for bad in ("not base64!", "QUJD", "A" * 5000):
        out = runner.invoke(app, ["audit", "verify", "--public-key", bad])
        assert out.exit_code == 2 and "base64" in out.output and "Traceback" not in out.output
    other = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOxBYhp4Ig5s="  # a valid key that signed nothing
    out = runner.invoke(app, ["audit", "verify", "--json", "--public-key", other])
    assert out.exit_code == 1 and "not a known seal key" in json.loads(out.output)["reason"]


def test_archived_blocks_keep_the_log_verifiable(store, tmp_path):
    from pamflow.purge import RetentionSettings, archive_expired, conciliate

    engine = store
    _sealed(engine, rows=1000, block=100)
    settings = RetentionSettings(archive_dir=tmp_path / "a", audit_log_days=100)
    res = archive_expired(engine, settings, datasets=("audit_log",))[0]
    assert res.batches >= 6 and res.rows == res.batches * 100
    check = _check(engine)
    assert check.intact and check.archived_seals == res.batches
    assert conciliate(engine, settings).ok
    # a row put back into an archived block is found
    with Session(engine) as db:
        first = db.exec(select(AuditSeal).where(AuditSeal.number == 1)).one()
    _sql(engine, f"INSERT INTO audit_log (id, at, actor, action, entity, detail, prev_hash, hash) "
                 f"VALUES ({first.last_id}, '2020-01-01 00:00:00', 'x', 'x', 'x', '{{}}', 'x', 'x')")
    bad = _check(engine)
    assert bad.broken_at == first.last_id and "archive" in bad.reason


def test_robot_seals_then_reports_a_broken_log(store, prefect_server):
    from flows.integrity import AuditLogAltered, tamper_proof_log

    write_audit(store, 120, utcnow(), utcnow())
    first = tamper_proof_log(block_rows=50)
    assert first["sealed"] == [1, 2, 3] and first["entries"] == 120
    _sql(store, "UPDATE audit_log SET detail = '{\"i\": 1}' WHERE id = 110")
    with pytest.raises(AuditLogAltered, match="entry 110"):
        tamper_proof_log(block_rows=50)
    with Session(store) as db:
        note = db.exec(select(Notification).where(Notification.type == "Audit trail")).one()
        seals = db.exec(select(AuditSeal)).all()
    assert "entry 110" in note.subject and len(seals) == 3
