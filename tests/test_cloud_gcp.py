"""GCP cloud device import through the real google-cloud-compute client (REST transport)
pointed at a local Compute Engine endpoint (tests/peers/gcp_compute.py): aggregatedList
over zones in many pages, label/status/zone filters, removal, the bearer token from a
vault entry, Google's error bodies, throttling and garbage (nothing written)."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from pamflow.cloud import CloudAccount, CloudError, import_account
from pamflow.cloud.gcp import server_filter
from pamflow.models import Credential, Device
from pamflow.vault_entries import put_entry
from tests.peers.gcp_compute import FakeCompute, gcp_instance

ZONES = ["us-central1-a", "us-central1-b", "europe-west1-b", "asia-east1-a"]
TOKEN = "ya29.gcp-test-token-never-shown"


@pytest.fixture(autouse=True)
def _cloud_endpoints(monkeypatch):
    """The local peers are the private endpoints this host allows (PAMFLOW_CLOUD_ENDPOINTS)."""
    monkeypatch.setenv("PAMFLOW_CLOUD_ENDPOINTS", "http://127.0.0.1:*, https://127.0.0.1:*")


@pytest.fixture
def compute():
    fake = FakeCompute(token=TOKEN)
    peer = fake.serve()
    fake.url = peer.url  # type: ignore[attr-defined]
    fake.peer = peer  # type: ignore[attr-defined]
    yield fake
    peer.stop()


@pytest.fixture
def token():
    """The access token as a vault entry, in the test's store (list this fixture after it)."""
    from pamflow import db

    with db.session() as s:
        put_entry(s, "gcp-key", {"access_token": TOKEN}, kind="gcp-token")
        s.commit()


def account(compute, **kw) -> CloudAccount:
    return CloudAccount(**{"name": "gcp-prod", "provider": "gcp", "project": "pamflow-test",
                           "endpoint_url": compute.url, "allow_cleartext": True,
                           "credentials": "vault", "vault_entry": "gcp-key", "page_size": 7,
                           "retry_seconds": 2, **kw})


def populate(compute, per_zone: int = 10) -> dict[str, str]:
    ids = {}
    n = 0
    for z, zone in enumerate(ZONES):
        for i in range(per_zone):
            n += 1
            compute.add(zone, gcp_instance(
                5_000_000_000_000_000_000 + n, f"vm-{zone}-{i}", zone, ip=f"10.{z}.0.{i + 1}",
                nat=f"34.{z}.0.{i + 1}", status="RUNNING" if i % 3 else "TERMINATED",
                labels={"env": "prod" if i % 2 else "dev", "team": "pam"}, windows=i == 0))
            ids[str(5_000_000_000_000_000_000 + n)] = zone
    return ids


def devices(engine) -> dict[str, Device]:
    with Session(engine) as s:
        return {d.external_id: d for d in s.exec(select(Device))}


def test_aggregated_list_over_zones_in_many_pages(store, compute, token):
    ids = populate(compute)
    result = import_account(account(compute))
    assert (result.listed, result.added, result.skipped) == (40, 40, 0)
    assert len(compute.page_sizes) == 6 and set(compute.page_sizes[:-1]) == {7}
    found = devices(store)
    assert set(found) == set(ids)
    win = found[next(i for i, z in ids.items() if z == "europe-west1-b")]
    assert (win.platform, win.site, win.source, win.source_account) == \
        ("windows", "europe-west1-b", "gcp", "gcp-prod")
    assert win.tags == {"env": "dev", "team": "pam"} and win.instance_state == "terminated"
    # the bearer token of the vault entry was sent on every page, never anything else
    assert {h.get("authorization") for _, _, h in compute.peer.requests} == {f"Bearer {TOKEN}"}
    again = import_account(account(compute))
    assert (again.added, again.unchanged) == (0, 40)


def test_label_status_and_zone_filters(store, compute, token):
    populate(compute)
    acct = account(compute, tag_filters={"env": "prod"}, states=["running"],
                   regions=["us-central1", "asia-east1-a"], address="public")
    result = import_account(acct)
    # prod = odd i (5 per zone); running = i % 3 != 0 -> i in 1, 5, 7; 3 zones of 4 match
    assert result.added == 9
    for d in devices(store).values():
        assert d.tags["env"] == "prod" and d.instance_state == "running"
        assert d.site in ("us-central1-a", "us-central1-b", "asia-east1-a")
        assert d.address.startswith("34.")
    sent = compute.peer.requests[0][1]
    assert "filter=" in sent
    assert server_filter(acct) == '(labels.env = "prod") ((status = RUNNING))'
    hostile = account(compute, tag_filters={'x") OR (name = "y': "1", "ok": 'a" OR "b'})
    assert server_filter(hostile) == '(labels.ok = "a\\" OR \\"b")'


def test_deleted_instances_marked_removed_and_credentials_kept(store, compute, token):
    populate(compute, per_zone=3)
    import_account(account(compute))
    victim = next(iter(devices(store).values()))
    with Session(store) as s:
        s.add(Credential(device_id=victim.id, username="admin"))
        s.commit()
    compute.remove(int(victim.external_id))
    result = import_account(account(compute))
    assert (result.removed, result.unchanged) == (1, 11)
    after = devices(store)[victim.external_id]
    assert (after.active, after.instance_state) == (False, "removed")
    with Session(store) as s:
        assert s.exec(select(Credential)).one().device_id == victim.id


def test_refused_token_and_missing_project_write_nothing(store, compute, token):
    populate(compute, per_zone=2)
    with Session(store) as s:
        put_entry(s, "gcp-key", {"access_token": "wrong"}, kind="gcp-token")
        s.commit()
    with pytest.raises(CloudError, match="refused") as err:
        import_account(account(compute))
    assert "wrong" not in str(err.value)
    with pytest.raises(CloudError, match="the GCP project is not set"):
        import_account(account(compute, project=None))
    with pytest.raises(CloudError, match="HTTP 404"):
        import_account(account(compute, project="other-project"))
    assert devices(store) == {}


@pytest.mark.parametrize("fault,match", [
    ({"fail_next": [429] * 100}, "still refused after retrying for 2 s \\(HTTP 429"),
    ({"fail_next": [503] * 100}, "still refused after retrying for 2 s \\(HTTP 503"),
    ({"garbage": b"<html>\xff\xfe not json"}, "listing instances failed"),
    ({"garbage": b'{"items": {"zones/x": {"instances": [{"id": {"nested": []}}]}}}'},
     "listing instances failed"),
    ({"garbage": b"[" * 50_000}, "listing instances failed"),
    ({"raw_override": json.dumps({"items": {"zones/us-central1-a": {"warning": {
        "code": "UNREACHABLE", "message": "zone down"}}}}).encode()},
     "zones/us-central1-a answered UNREACHABLE: zone down"),
])
def test_throttling_garbage_and_partial_answers_write_nothing(store, compute, token, fault, match):
    populate(compute, per_zone=2)
    assert import_account(account(compute)).added == 8
    for k, v in fault.items():
        setattr(compute, k, v)
    with pytest.raises(CloudError, match=match) as err:
        import_account(account(compute))
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)
    assert all(d.active for d in devices(store).values())  # nothing marked removed
    if "fail_next" in fault:
        assert len(compute.peer.requests) > 2  # retried


def test_throttled_then_answering_imports(store, compute, token):
    populate(compute, per_zone=2)
    compute.fail_next = [429, 503]
    assert import_account(account(compute)).added == 8


def test_hostile_instances_cleaned_or_rejected(store, compute, token):
    compute.add("us-central1-a", gcp_instance(1, "'; DROP TABLE device;--" + "x" * 5000,
                                              "us-central1-a", ip="10.0.0.1",
                                              labels={"k" * 500: "v\u202e" * 1000}))
    bad_id = gcp_instance(2, "bad", "us-central1-a", ip="10.0.0.2")
    bad_id["id"] = "2; rm -rf /"
    compute.add("us-central1-a", bad_id)
    compute.add("us-central1-a", gcp_instance(3, "noip", "us-central1-a", ip="not-an-ip"))
    with pytest.raises(CloudError, match="listing instances failed"):
        import_account(account(compute))  # a non-numeric id is not Compute Engine's answer
    compute.remove(0)
    compute.zones["us-central1-a"] = [i for i in compute.zones["us-central1-a"]
                                      if i["name"] != "bad"]
    result = import_account(account(compute))
    assert (result.added, result.skipped) == (1, 1)
    [dev] = devices(store).values()
    assert dev.name.startswith("'; DROP TABLE device;--") and len(dev.name) == 255
    [(key, value)] = dev.tags.items()
    assert len(key) == 128 and value == "v" * 256


def test_the_same_import_on_postgresql(pg_store, compute, token):
    populate(compute, per_zone=2)
    assert import_account(account(compute)).added == 8
    assert pg_store.url.get_backend_name() == "postgresql" and len(devices(pg_store)) == 8
    compute.zones["asia-east1-a"] = []
    assert import_account(account(compute)).removed == 2
