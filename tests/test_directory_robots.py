"""The directory robots as Prefect flows on the real server (settings from blocks saved
there, the bind password from the vault), and the ``pamflow directory`` CLI."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import Device, User
from tests.directory_helpers import fresh_slapd, people, register_bind

pytestmark = pytest.mark.usefixtures("needs_slapd")


@pytest.fixture
def corp():
    server = fresh_slapd()
    try:
        yield server
    finally:
        server.stop()


def save_block(slapd, **kw) -> str:
    from blocks.ldap_directory import LdapDirectoryBlock

    name = f"corp-{uuid.uuid4().hex[:8]}"
    values = {"url": slapd.url, "ca_file": str(slapd.ca_cert), "bind_dn": slapd.root_dn,
              "bind_secret_device": "corp-ldap", "user_base": slapd.people_dn,
              "group_base": f"ou=groups,{slapd.suffix}",
              "computer_base": f"ou=computers,{slapd.suffix}", "page_size": 50}
    values.update(kw)
    LdapDirectoryBlock(**values).save(name, overwrite=True)
    return name


def artifacts(client, keys: list[str]) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return "\n".join(json.dumps([a.key, a.data, a.description], default=str) for a in arts)


def test_sync_and_access_flows_for_real(store, corp, prefect_client_sync):
    from flows.directory import access_groups_processing, ldap_ad_synchronization

    people(corp, [f"p{i}" for i in range(120)])
    corp.add_user("*)(uid=*", None)
    register_bind(store, corp)
    name = save_block(corp)

    summary = ldap_ad_synchronization(directory=name)
    assert summary["mode"] == "full" and summary["created"] == 121 and summary["pages"] >= 3
    again = ldap_ad_synchronization(directory=name)
    assert again["mode"] == "incremental" and again["created"] == 0
    assert access_groups_processing()["users"] == 121
    missing = ldap_ad_synchronization(directory="no-such-directory")
    assert missing["configured"] is False and "no-such-directory" in missing["reason"]

    text = artifacts(prefect_client_sync, ["ldap-ad-synchronization",
                                           "ldap-ad-synchronization-progress",
                                           "access-groups-processing"])
    assert "created" in text and corp.root_password not in text
    with Session(store) as db:
        assert len(db.exec(select(User)).all()) == 121


def test_cli_sync_and_clear_errors(store, corp, prefect_server):
    people(corp, ["alice", "bob"])
    corp.add_user("*)(uid=*", None)
    register_bind(store, corp)
    name = save_block(corp)
    runner = CliRunner()

    one = runner.invoke(app, ["directory", "sync", "-d", name, "--user", "*)(uid=*", "--json"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["created"] == 1
    full = runner.invoke(app, ["directory", "sync", "-d", name, "--full", "--json"])
    assert full.exit_code == 0 and json.loads(full.stdout)["created"] == 2
    shown = runner.invoke(app, ["directory", "status", "--json"])
    assert shown.exit_code == 0 and f"{name}:users" in shown.stdout
    assert runner.invoke(app, ["directory", "access"]).exit_code == 0

    for args, reason in (
            (["directory", "sync", "-d", "nope"], "no LDAP directory block named 'nope'"),
            (["directory", "sync", "-d", "../x/" + "y" * 5000], "is not a block name"),
            (["directory", "import-database", "--database", "a/b"], "is not a block name"),
            (["directory", "sync", "-d", save_block(corp, bind_secret_device="ghost")],
             "does not resolve: no such device"),
            (["directory", "sync", "-d", save_block(corp, url="ldap://127.0.0.1:1")],
             "cannot connect"),
            (["directory", "sync", "-d", save_block(corp, url=corp.ldaps_url, ca_file=None)],
             "not trusted"),
            (["directory", "sync", "-d", save_block(corp, user_filter="(uid=*")],
             "user_filter"),
            (["directory", "sync", "-d", name, "--user", "x" * 5000], "1-255 characters")):
        out = runner.invoke(app, args)
        assert out.exit_code == 2, (args, out.output)
        assert reason in out.output and "Traceback" not in out.output
        assert len(out.output.strip().splitlines()) <= 3  # one line (wrapped on narrow terminals)


def test_ldap_device_import_flow_and_cli(store, corp, prefect_client_sync):
    from flows.directory import ldap_device_import

    base = f"ou=computers,{corp.suffix}"
    for i in range(60):
        corp.add_entry(f"cn=host{i},{base}", ["device", "ipHost"],
                       {"cn": f"host{i}", "ipHostNumber": f"10.9.{i // 250}.{i % 250 + 1}",
                        "description": "Ubuntu 24.04" if i % 2 else "Windows Server 2022"})
    corp.add_entry(f"cn=noaddr,{base}", ["device"], {"cn": "noaddr"})
    corp.add_entry(f"cn=bad,{base}", ["device", "ipHost"],
                   {"cn": "bad", "ipHostNumber": "not an address!"})
    with Session(store) as db:
        db.add(Device(name="hand-made", address="10.9.0.5", source="manual"))
        db.commit()
    register_bind(store, corp)
    name = save_block(corp)

    summary = ldap_device_import(directory=name)
    assert summary["created"] == 59 and summary["rejected"] == 3, summary
    with Session(store) as db:
        devices = {d.name: d for d in db.exec(select(Device).where(Device.source == "ldap"))}
    assert devices["host0"].platform == "windows" and devices["host1"].platform == "linux"
    assert devices["host1"].external_id and devices["host1"].settings["origin"] == name
    assert devices["host1"].settings["dn"].startswith("cn=host1,")
    text = artifacts(prefect_client_sync, ["ldap-device-import-rejected"])
    assert "already belongs to device 'hand-made'" in text and "no address" in text

    with corp.connection() as conn:
        conn.delete(f"cn=host3,{base}")
        conn.modify(f"cn=host1,{base}", {"description": [("MODIFY_REPLACE", ["Windows 11"])]})
    out = CliRunner().invoke(app, ["directory", "import-computers", "-d", name, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert (result["created"], result["updated"], result["removed"]) == (0, 1, 1)
    with Session(store) as db:
        gone = db.exec(select(Device).where(Device.name == "host3")).one()
        assert gone.active is False and "removed_at" in gone.settings  # marked, not deleted
        assert db.exec(select(Device).where(Device.name == "host1")).one().platform == "windows"


def test_device_database_import_flow_and_cli(store, tmp_path, monkeypatch, prefect_client_sync):
    import sqlite3

    from blocks.device_database import DeviceDatabaseBlock
    from flows.directory import device_database_import

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setenv("PAMFLOW_UPLOAD_DIR", str(uploads))
    with sqlite3.connect(uploads / "cmdb.db") as conn:
        conn.execute("CREATE TABLE hosts (id TEXT, name TEXT, address TEXT, site TEXT)")
        conn.executemany("INSERT INTO hosts VALUES (?, ?, ?, ?)",
                         [(f"id{i}", f"db{i}", f"10.40.0.{i + 1}", "oslo") for i in range(30)])
    name = f"cmdb-{uuid.uuid4().hex[:8]}"
    DeviceDatabaseBlock(url="sqlite:///cmdb.db", query="SELECT id AS external_id, name, "
                        "address, site FROM hosts").save(name, overwrite=True)
    summary = device_database_import(database=name)
    assert summary["created"] == 30 and summary["rejected"] == 0
    assert "created" in artifacts(prefect_client_sync, ["device-database-import"])
    out = CliRunner().invoke(app, ["directory", "import-database", "--database", name, "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["unchanged"] == 30
    bad = f"bad-{uuid.uuid4().hex[:8]}"
    DeviceDatabaseBlock(url="sqlite:///cmdb.db", query="DELETE FROM hosts").save(bad)
    out = CliRunner().invoke(app, ["directory", "import-database", "--database", bad])
    assert out.exit_code == 2 and "only a SELECT query is allowed" in out.output
    from pamflow.directory import DeviceDatabaseError

    with pytest.raises(DeviceDatabaseError, match="only a SELECT"):  # the run fails, visibly
        device_database_import(database=bad)
