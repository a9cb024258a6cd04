"""Device database import against real PostgreSQL and SQLite: upserts by the external id
column, read-only enforced (queries refused before connecting, and a read-only transaction
or file underneath), hostile rows rejected with their reason, nothing half-written."""

from __future__ import annotations

import os
import sqlite3
import uuid

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow.directory import (
    BindSecretMissing,
    DatabaseSettings,
    DeviceDatabaseError,
    DirectorySettingsError,
    check_query,
    database_password,
    import_database,
)
from pamflow.directory.database import _readonly_engine
from pamflow.models import AuditLog, Device
from tests.fixtures.stores import PG_ADMIN_URL, create_pg_database, drop_pg_database

QUERY = ("SELECT id AS external_id, hostname AS name, ip AS address, os AS operating_system, "
         "site, ports FROM hosts")


@pytest.fixture
def cmdb():
    """A PostgreSQL database with a ``hosts`` table of 1,200 rows."""
    name = create_pg_database()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE hosts (id text PRIMARY KEY, hostname text, ip text, "
                             "os text, site text, ports text, raw bytea)"))
        conn.execute(sa.text("INSERT INTO hosts SELECT 'h' || i, 'host' || i, "
                             "'10.20.' || (i / 250) || '.' || (i % 250 + 1), "
                             "CASE WHEN i % 2 = 0 THEN 'Windows Server 2019' ELSE 'RHEL 9' END, "
                             "'lyon', '22,443' FROM generate_series(0, 1199) AS i"))
        conn.execute(sa.text("CREATE TABLE touched (n int)"))
        conn.execute(sa.text("CREATE FUNCTION bump() RETURNS text LANGUAGE sql AS "
                             "$$ INSERT INTO touched VALUES (1); SELECT 'x' $$"))
    yield engine, f"postgresql://postgres@127.0.0.1:5432/{name}"
    engine.dispose()
    drop_pg_database(name)


def devices(store, origin: str | None = None) -> dict[str, Device]:
    with Session(store) as db:
        return {d.name: d for d in db.exec(select(Device))
                if origin is None or (d.settings or {}).get("origin") == origin}


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_postgresql_import_upsert_and_removal(backend, request, cmdb):
    store = request.getfixturevalue(backend)
    engine, url = cmdb
    st = DatabaseSettings(name="cmdb", url=url, query=QUERY).check()
    first = import_database(store, st, None)
    assert (first.created, first.rejected) == (1200, [])
    found = devices(store, "cmdb")
    assert found["host0"].platform == "windows" and found["host1"].platform == "linux"
    assert found["host5"].ports == [22, 443] and found["host5"].site == "lyon"
    assert found["host5"].source == "database" and found["host5"].external_id == "h5"

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE hosts SET hostname = 'renamed7' WHERE id = 'h7'"))
        conn.execute(sa.text("DELETE FROM hosts WHERE id = 'h9'"))
    second = import_database(store, st, None)
    assert (second.created, second.updated, second.removed, second.unchanged) == (0, 1, 1, 1198)
    found = devices(store, "cmdb")
    assert "renamed7" in found and found["host9"].active is False  # marked, never deleted
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO hosts (id, hostname, ip) VALUES ('h9', 'host9', "
                             "'10.20.0.10')"))
    assert import_database(store, st, None).restored == 1


def test_postgresql_read_only_is_enforced(store, cmdb):
    engine, url = cmdb
    sneaky = DatabaseSettings(name="cmdb", url=url, query=(
        "SELECT bump() AS external_id, hostname AS name, ip AS address FROM hosts")).check()
    with pytest.raises(DeviceDatabaseError, match="read-only transaction"):
        import_database(store, sneaky, None)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM touched")).scalar() == 0
    assert devices(store) == {}
    for query in ("DELETE FROM hosts", "SELECT 1; DROP TABLE hosts",
                  "WITH x AS (DELETE FROM hosts RETURNING *) SELECT * FROM x",
                  "SELECT * INTO copy FROM hosts", "select pg_sleep(100)",
                  "SELECT * FROM hosts FOR UPDATE", "UPDATE hosts SET ip = '1.1.1.1'",
                  "/* */ TRUNCATE hosts", "", "SELECT '" + "x" * 30000 + "'"):
        with pytest.raises(DeviceDatabaseError):
            check_query(query, "test")
    # words inside string literals and comments are not statements
    assert check_query("SELECT 'delete' AS note -- drop\nFROM hosts;", "t")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM hosts")).scalar() == 1200


def test_settings_refuse_passwords_and_unsupported_databases(store, cmdb):
    _engine, url = cmdb
    for kw, reason in (({"url": url.replace("postgres@", "postgres:secret@")}, "carries a password"),
                       ({"url": "mysql://u@h/db"}, "not supported"),
                       ({"url": "not a url"}, "not a SQLAlchemy URL"),
                       ({"columns": {"evil": "x"}}, "unknown column mapping")):
        with pytest.raises((DirectorySettingsError, DeviceDatabaseError), match=reason):
            DatabaseSettings(**{"name": "cmdb", "url": url, "query": QUERY, **kw}).check()
    ghost = DatabaseSettings(name="cmdb", url=url, query=QUERY, password_device="nowhere").check()
    with pytest.raises(BindSecretMissing, match="does not resolve"):
        database_password(store, ghost)


def test_hostile_rows_rejected_with_reasons_and_limits(store, cmdb):
    engine, url = cmdb
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM hosts WHERE id <> 'h1'"))
        conn.execute(sa.text("INSERT INTO hosts (id, hostname, ip, ports, raw) VALUES "
                             "('h2', :long, '10.0.0.2', NULL, NULL), "
                             "('h3', 'bell' || chr(7), '10.0.0.3', NULL, NULL), "
                             "('h4', 'ports', '10.0.0.4', '22,99999', NULL), "
                             "('h5', 'noaddr', NULL, NULL, NULL), "
                             "('h6', 'badaddr', '10.0.0.1; rm -rf /', NULL, NULL), "
                             "('h7', 'binary', '10.0.0.7', NULL, '\\xfffe00'::bytea), "
                             "('h8', 'noid', '10.0.0.8', NULL, NULL)"), {"long": "n" * 5000})
    st = DatabaseSettings(name="cmdb", url=url, query=(
        "SELECT NULLIF(id, 'h8') AS external_id, COALESCE(raw, convert_to(hostname, 'UTF8')) AS name, "
        "ip AS address, ports FROM hosts"), columns={"ports": "ports"}).check()
    result = import_database(store, st, None)
    reasons = {r.dn: r.reason for r in result.rejected}
    assert result.created == 1 and len(result.rejected) == 7, reasons
    text = " | ".join(reasons.values())
    for expected in ("more than 255", "control characters", "port 99999", "no address",
                     "no usable address", "not valid UTF-8", "no external id"):
        assert expected in text

    small = DatabaseSettings(name="cmdb", url=url, query=QUERY, max_rows=3).check()
    before = devices(store)
    with pytest.raises(DeviceDatabaseError, match="more than 3 rows"):
        import_database(store, small, None)
    assert devices(store).keys() == before.keys()
    with pytest.raises(DeviceDatabaseError, match="has no column external_id, hostname, address"):
        import_database(store, DatabaseSettings(name="cmdb", url=url, query="SELECT id FROM hosts",
                                                columns={"name": "hostname"}).check(), None)


def test_sqlite_read_only_and_confined_to_uploads(store, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setenv("PAMFLOW_UPLOAD_DIR", str(uploads))
    path = uploads / "inventory.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE machines (uuid TEXT, fqdn TEXT, addr TEXT)")
        conn.executemany("INSERT INTO machines VALUES (?, ?, ?)",
                         [(str(uuid.uuid4()), f"m{i}.corp", f"10.30.0.{i + 1}") for i in range(50)])
    st = DatabaseSettings(name="inv", url="sqlite:///inventory.db",
                          query="SELECT uuid, fqdn, addr FROM machines",
                          columns={"external_id": "uuid", "name": "fqdn", "address": "addr"}).check()
    assert import_database(store, st, None).created == 50
    ro = _readonly_engine(st, None)
    with ro.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly|read-only"):
        conn.execute(sa.text("DELETE FROM machines"))
    ro.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM machines").fetchone()[0] == 50

    outside = tmp_path / "elsewhere.db"
    outside.write_bytes(path.read_bytes())
    os.symlink(outside, uploads / "link.db")
    for url in (f"sqlite:///{outside}", "sqlite:///../elsewhere.db", "sqlite:///link.db",
                "sqlite:///:memory:", "sqlite:///missing.db"):
        bad = DatabaseSettings(name="inv", url=url, query="SELECT uuid, fqdn, addr FROM machines",
                               columns=st.columns).check()
        with pytest.raises(DeviceDatabaseError, match="upload directory"):
            import_database(store, bad, None)
    with Session(store) as db:
        assert any(a.action == "devices_imported" for a in db.exec(select(AuditLog)))
