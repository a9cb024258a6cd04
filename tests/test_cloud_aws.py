"""AWS cloud device import against a real moto_server: many instances over several regions
in many pages, tag and state filters, removal on the next run (credentials kept), vault
credentials, and hostile or failing EC2 answers from a local endpoint (nothing written)."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow.cloud import CloudAccount, CloudError, import_account
from pamflow.cloud.model import clean_text
from pamflow.models import AuditLog, Credential, Device
from pamflow.platform import free_port
from pamflow.vault_entries import VaultEntryError, put_entry, remove_entry
from tests.fixtures.peers import require
from tests.peers import moto as moto_peer
from tests.peers.cloud_http import Peer

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]
AMI = "ami-1e749f67"  # ubuntu (ami-12c6146b is a Windows image: platform "windows")


@pytest.fixture(autouse=True)
def _cloud_endpoints(monkeypatch):
    """The local peers are the private endpoints this host allows (PAMFLOW_CLOUD_ENDPOINTS)."""
    monkeypatch.setenv("PAMFLOW_CLOUD_ENDPOINTS", "http://127.0.0.1:*, https://127.0.0.1:*")


@pytest.fixture(scope="session")
def moto_url():
    require("moto_server", moto_peer.moto_missing(), moto_peer.FIX)
    port = free_port()
    proc = moto_peer.start(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def ec2(moto_url, monkeypatch):
    """boto3 EC2 clients per region on a freshly reset moto_server."""
    import boto3
    import httpx

    httpx.post(f"{moto_url}/moto-api/reset").raise_for_status()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
        monkeypatch.setenv(k, v)
    return {r: boto3.client("ec2", region_name=r, endpoint_url=moto_url) for r in REGIONS}


def account(moto_url, **kw) -> CloudAccount:
    settings = {"name": "aws-prod", "provider": "aws", "regions": REGIONS, "endpoint_url": moto_url,
                "allow_cleartext": True, "page_size": 5, **kw}
    return CloudAccount(**settings)


def launch(client, count: int, tags: dict[str, str] | None = None) -> list[str]:
    spec = [{"ResourceType": "instance",
             "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}] if tags else []
    out = client.run_instances(ImageId=AMI, MinCount=count, MaxCount=count,
                               TagSpecifications=spec)
    return [i["InstanceId"] for i in out["Instances"]]


def devices(engine, **where) -> list[Device]:
    with Session(engine) as s:
        q = select(Device).where(*(getattr(Device, k) == v for k, v in where.items()))
        return list(s.exec(q.order_by(Device.id)))


def test_many_instances_over_regions_in_many_pages(store, ec2, moto_url):
    ids = {}
    for region, client in ec2.items():
        for n in range(12):  # 12 reservations per region: at 5 a page, 3 pages per region
            for iid in launch(client, 2, {"Name": f"{region}-web-{n}", "env": "prod"}):
                ids[iid] = region
    pages = list(ec2["eu-west-1"].get_paginator("describe_instances")
                 .paginate(PaginationConfig={"PageSize": 5}))
    assert len(pages) == 3  # the listing really is paged

    result = import_account(account(moto_url))

    assert (result.listed, result.added, result.updated, result.removed) == (72, 72, 0, 0)
    found = {d.external_id: d for d in devices(store, source="aws")}
    assert set(found) == set(ids)
    dev = next(iter(found.values()))
    assert dev.tenant == "default" and dev.source_account == "aws-prod"
    assert dev.site == ids[dev.external_id] and dev.instance_state == "running"
    assert dev.tags["env"] == "prod" and dev.name.startswith(dev.site)
    assert dev.address.startswith("10.") and dev.platform == "linux"
    # a second run changes nothing
    again = import_account(account(moto_url))
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 72, 0)


def test_public_address_choice_and_tenant(store, ec2, moto_url):
    launch(ec2["us-east-1"], 3, {"Name": "pub"})
    result = import_account(account(moto_url, address="public", tenant="acme"))
    assert result.added == 3
    for d in devices(store, source="aws"):
        assert d.tenant == "acme" and not d.address.startswith("10.")


def test_tag_and_state_filters(store, ec2, moto_url):
    prod = launch(ec2["us-east-1"], 4, {"env": "prod"})
    launch(ec2["us-east-1"], 3, {"env": "dev"})
    launch(ec2["eu-west-1"], 2)  # no tag at all
    ec2["us-east-1"].stop_instances(InstanceIds=prod[:1])

    result = import_account(account(moto_url, tag_filters={"env": "prod"}, states=["running"]))
    assert result.added == 3
    assert {d.external_id for d in devices(store)} == set(prod[1:])

    any_env = import_account(account(moto_url, name="aws-any", tag_filters={"env": "*"}))
    # the three running prod instances are aws-prod's devices already: their addresses are held
    assert (any_env.added, any_env.skipped) == (4, 3)
    assert sum("held by device" in c.detail for c in any_env.changes) == 3


def test_stopped_state_refreshed_and_removed_instances_keep_credentials(store, ec2, moto_url):
    ids = launch(ec2["us-east-1"], 4, {"Name": "db"}) + launch(ec2["eu-west-1"], 2)
    assert import_account(account(moto_url)).added == 6
    gone = {d.external_id: d.id for d in devices(store)}[ids[0]]
    with Session(store) as s:
        s.add(Credential(device_id=gone, username="root", secret=None))
        s.commit()

    ec2["us-east-1"].terminate_instances(InstanceIds=[ids[0]])
    ec2["us-east-1"].stop_instances(InstanceIds=[ids[1]])
    ec2["eu-west-1"].create_tags(Resources=[ids[4]], Tags=[{"Key": "owner", "Value": "team-a"}])
    result = import_account(account(moto_url))

    assert (result.added, result.updated, result.removed) == (0, 2, 1)
    by_id = {d.external_id: d for d in devices(store)}
    assert len(by_id) == 6  # nothing deleted
    removed = by_id[ids[0]]
    assert (removed.active, removed.instance_state) == (False, "removed")
    assert removed.removed_at is not None
    assert by_id[ids[1]].instance_state in ("stopping", "stopped") and by_id[ids[1]].active
    assert by_id[ids[4]].tags == {"owner": "team-a"}
    with Session(store) as s:
        assert s.exec(select(Credential).where(Credential.device_id == gone)).one().username == "root"
        actions = [a.action for a in s.exec(select(AuditLog))]
    assert actions.count("device.cloud_added") == 6 and "device.cloud_removed" in actions
    # still gone on the next run: not removed twice
    assert import_account(account(moto_url)).removed == 0


def test_credentials_from_a_vault_entry_of_the_tenant(store, ec2, moto_url, monkeypatch):
    launch(ec2["us-east-1"], 2)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    acct = account(moto_url, credentials="vault", vault_entry="aws-prod-key", tenant="acme")
    with pytest.raises(CloudError, match="no vault entry aws-prod-key for tenant acme"):
        import_account(acct)
    with Session(store) as s:
        put_entry(s, "aws-prod-key", {"access_key_id": "AKIAEXAMPLE",
                                      "secret_access_key": "s3cr3t-never-shown"}, tenant="other")
        s.commit()
    with pytest.raises(CloudError, match="for tenant acme") as err:
        import_account(acct)
    assert "s3cr3t" not in str(err.value)
    assert devices(store) == []
    with Session(store) as s, pytest.raises(VaultEntryError, match="another tenant"):
        put_entry(s, "aws-prod-key", {"access_key_id": "A", "secret_access_key": "B"},
                  tenant="acme")
    with Session(store) as s:
        assert remove_entry(s, "aws-prod-key")
        put_entry(s, "aws-prod-key", {"access_key_id": "AKIAEXAMPLE",
                                      "secret_access_key": "s3cr3t-never-shown"}, tenant="acme")
        s.commit()
    assert import_account(acct).added == 2


def test_an_endpoint_this_host_does_not_allow_is_refused(store, monkeypatch):
    """A block (editable by any Prefect API caller) cannot point credentials elsewhere."""
    hits = []
    peer = Peer(lambda *a: hits.append(a) or (500, {}, b"")).start()
    try:
        monkeypatch.setenv("PAMFLOW_CLOUD_ENDPOINTS", "https://ec2.internal.example")
        for provider, extra in (("aws", {"regions": ["us-east-1"]}), ("gcp", {"project": "p"}),
                                ("azure", {"subscription_id": "s"})):
            acct = CloudAccount(name="evil", provider=provider, endpoint_url=peer.url,
                                allow_cleartext=True, **extra)
            with pytest.raises(CloudError, match="is not allowed on this host: add it to "
                                                 "PAMFLOW_CLOUD_ENDPOINTS"):
                import_account(acct)
        monkeypatch.delenv("PAMFLOW_CLOUD_ENDPOINTS")
        with pytest.raises(CloudError, match="not allowed on this host"):
            import_account(CloudAccount(name="evil", provider="aws", regions=["us-east-1"],
                                        endpoint_url=peer.url, allow_cleartext=True))
    finally:
        peer.stop()
    assert hits == []


def test_settings_are_checked_before_anything_is_asked(store):
    with pytest.raises(CloudError, match="list the regions"):
        import_account(CloudAccount(name="a", provider="aws"))
    with pytest.raises(CloudError, match="cleartext http"):
        import_account(CloudAccount(name="a", provider="aws", regions=["us-east-1"],
                                    endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="invalid region"):
        CloudAccount(name="a", provider="aws", regions=["us-east-1; rm -rf /"])


def test_the_same_import_on_postgresql(pg_store, ec2, moto_url):
    launch(ec2["us-east-1"], 3, {"Name": "pg"})
    assert import_account(account(moto_url)).added == 3
    ec2["us-east-1"].terminate_instances(InstanceIds=[devices(pg_store)[0].external_id])
    assert import_account(account(moto_url)).removed == 1


# --- hostile and failing EC2 answers from a local endpoint --------------------------------

def _xml_instance(iid: str, name: str, private: str, tags: list[tuple[str, str]],
                  platform: str = "") -> str:
    from xml.sax.saxutils import escape

    tagset = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>"
                     for k, v in [("Name", name), *tags])
    plat = f"<platform>{platform}</platform>" if platform else ""
    return (f"<item><instanceId>{escape(iid)}</instanceId><instanceState><code>16</code>"
            f"<name>running</name></instanceState><privateIpAddress>{escape(private)}"
            f"</privateIpAddress>{plat}<tagSet>{tagset}</tagSet></item>")


def _describe(instances: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><DescribeInstancesResponse '
            f'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId>'
            f"<reservationSet><item><reservationId>r-1</reservationId><ownerId>1</ownerId>"
            f"<instancesSet>{instances}</instancesSet></item></reservationSet>"
            f"</DescribeInstancesResponse>").encode()


HOSTILE = [
    ("i-0000000000000001", "'; DROP TABLE device;--", "10.9.0.1",
     [("huge", "x" * 1_000_000), ("rtl", "abc\u202edef")], "windows"),
    ("i-0000000000000002", "<script>alert(1)</script>\u200b\n\t", "10.9.0.2",
     [(f"k{n}", "v") for n in range(500)], ""),
    ("i-0000000000000003", "名前-ñ-😀 ../../etc/passwd", "10.9.0.3", [("${jndi:x}", "`id`")], ""),
    ("i-1; rm -rf /", "bad id", "10.9.0.4", [], ""),
    ("i-0000000000000005", "bad address", "999.1.1.1", [], ""),
]


def test_hostile_answers_are_cleaned_or_rejected(store, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    body = _describe("".join(_xml_instance(*h) for h in HOSTILE))
    peer = Peer(lambda *a: (200, {"Content-Type": "text/xml"}, body)).start()
    try:
        result = import_account(CloudAccount(name="hostile", provider="aws", regions=["us-east-1"],
                                             endpoint_url=peer.url, allow_cleartext=True))
    finally:
        peer.stop()
    assert (result.added, result.skipped) == (3, 2)
    reasons = {c.external_id: c.detail for c in result.changes if c.action == "skipped"}
    assert reasons == {"i-1; rm -rf /": "the instance id is not a valid id",
                       "i-0000000000000005": "no private address"}
    by_id = {d.external_id: d for d in devices(store)}
    one, two, three = (by_id[f"i-000000000000000{n}"] for n in (1, 2, 3))
    assert one.name == "'; DROP TABLE device;--" and one.platform == "windows"
    assert len(one.tags["huge"]) == 256 and one.tags["rtl"] == "abcdef"
    assert two.name == "<script>alert(1)</script>" and len(two.tags) == 64
    assert three.name == "名前-ñ-😀 ../../etc/passwd" and three.tags["${jndi:x}"] == "`id`"


@pytest.mark.parametrize("status,body", [
    (503, b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down"
          b"</Message></Error></Errors></Response>"),
    (200, b"\x89PNG garbage \xff\xfe not xml at all"),
    (200, b"<DescribeInstancesResponse><reservationSet><item>&#27;</item></reservationSet>"),
])
def test_throttling_and_garbage_fail_clearly_and_write_nothing(store, ec2, moto_url, status, body):
    launch(ec2["us-east-1"], 2)
    assert import_account(account(moto_url, regions=["us-east-1"])).added == 2
    peer = Peer(lambda *a: (status, {"Content-Type": "text/xml"}, body)).start()
    try:
        with pytest.raises(CloudError, match="AWS account aws-prod, region us-east-1: listing "
                                             "instances failed") as err:
            import_account(account(moto_url, regions=["us-east-1"], endpoint_url=peer.url,
                                   max_attempts=3))
    finally:
        peer.stop()
    if status == 503:
        assert len(peer.requests) == 3 and "RequestLimitExceeded" in str(err.value)
    assert "\n" not in str(err.value)
    assert [d.instance_state for d in devices(store)] == ["running", "running"]  # not removed


def test_clean_text_limits_input_before_normalising():
    assert clean_text("a" * 10_000_000, 5) == "aaaaa"
    assert clean_text(b"\xff\xfeok", 10) == "\ufffd\ufffdok"



@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0008c_keeps_devices_and_credentials(backend, tmp_path):
    """Devices written at revision 0003, with credentials pointing at them, get the cloud
    columns (on SQLite too, where rebuilding the device table would break the foreign keys)."""
    from alembic import command

    from pamflow import db
    from tests.fixtures.stores import create_pg_database, drop_pg_database

    name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        name = create_pg_database()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        engine = db.make_engine(url)
        with engine.begin() as conn:
            command.upgrade(db._alembic_config(conn), "0003")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO device (id, name, address, platform, ports, tenant, source, "
                "external_id, maintenance_mode, active, connectivity, settings, created_at, "
                "updated_at) VALUES (1, 'old', '10.0.0.1', 'linux', '[]', 'default', 'import', "
                "'x', false, true, 'unknown', '{}', '2026-01-01', '2026-01-01')"))
            conn.execute(sa.text(
                "INSERT INTO credential (id, device_id, username, kind, secret_version, status, "
                "policy, auto_change, created_at, updated_at) VALUES (1, 1, 'root', 'local', 0, "
                "'ok', 'default', true, '2026-01-01', '2026-01-01')"))
        db.migrate(engine)
        with Session(engine) as s:
            dev = s.get(Device, 1)
            assert (dev.tags, dev.instance_state, dev.source_account) == ({}, None, None)
            assert s.get(Credential, 1).device_id == 1
        engine.dispose()
    finally:
        if name:
            drop_pg_database(name)


def test_addresses_claimed_within_one_run_and_a_move_to_a_freed_address(store):
    """Written straight from listings: two new instances with one address (the second is
    skipped, naming the first), and a known device moving away from an address that a new
    instance takes in the same run (both written)."""
    from pamflow.cloud import CloudInstance, write_devices

    acct = CloudAccount(name="direct", provider="aws", regions=["us-east-1"])

    def inst(iid: str, ip: str) -> CloudInstance:
        return CloudInstance(iid, iid, "us-east-1", ip, None, "linux", "running", {})

    first = write_devices(acct, [inst("i-a", "10.0.0.1"), inst("i-b", "10.0.0.1")])
    assert (first.added, first.skipped) == (1, 1)
    assert [c.detail for c in first.changes if c.action == "skipped"] == \
        ["address taken by instance i-a in this run"]
    moved = write_devices(acct, [inst("i-a", "10.0.0.2"), inst("i-c", "10.0.0.1")])
    assert (moved.added, moved.updated, moved.skipped) == (1, 1, 0)
    by_id = {d.external_id: d.address for d in devices(store)}
    assert by_id == {"i-a": "10.0.0.2", "i-c": "10.0.0.1"}
