"""Azure cloud device import through the real azure-mgmt-compute and azure-mgmt-network
clients pointed at a local ARM endpoint over verified TLS (tests/peers/azure_arm.py): VMs
with their power state, addresses from network interfaces and public IPs, nextLink paging,
tag/state/location filters, removal, the bearer token from a vault entry, ARM error bodies,
throttling and garbage (nothing written)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from pamflow.cloud import CloudAccount, CloudError, import_account
from pamflow.models import Credential, Device
from pamflow.vault_entries import put_entry
from tests.peers.azure_arm import NICS, PIPS, SUB, VMS, FakeArm
from tests.peers.tls import self_signed

TOKEN = "eyJ0eXAiOiJKV1Qi.azure-test-token-never-shown"


@pytest.fixture(autouse=True)
def _cloud_endpoints(monkeypatch):
    """The local peers are the private endpoints this host allows (PAMFLOW_CLOUD_ENDPOINTS)."""
    monkeypatch.setenv("PAMFLOW_CLOUD_ENDPOINTS", "http://127.0.0.1:*, https://127.0.0.1:*")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    c, k, _ = self_signed(tmp_path_factory.mktemp("arm"), "arm")
    return c, k


@pytest.fixture
def arm(cert):
    fake = FakeArm(token=TOKEN)
    peer = fake.serve(cert)
    fake.peer = peer  # type: ignore[attr-defined]
    yield fake
    peer.stop()


@pytest.fixture
def token():
    """The bearer token as a vault entry, in the test's store (list this fixture after it)."""
    from pamflow import db

    with db.session() as s:
        put_entry(s, "azure-key", {"access_token": TOKEN}, kind="azure-token")
        s.commit()


def account(arm, cert, **kw) -> CloudAccount:
    return CloudAccount(**{"name": "azure-prod", "provider": "azure", "subscription_id": SUB,
                           "endpoint_url": arm.url, "ca_file": str(cert[0]),
                           "credentials": "vault", "vault_entry": "azure-key",
                           "max_attempts": 3, **kw})


def populate(arm, count: int = 23) -> list[str]:
    ids = []
    for n in range(count):
        ids.append(arm.add_vm(
            n, group="rg-a" if n % 2 else "rg-b",
            location="westeurope" if n % 3 else "eastus", private=f"10.1.{n // 200}.{n % 200 + 4}",
            public=f"20.0.0.{n}" if n % 4 == 0 else None,
            power="running" if n % 5 else "deallocated", os_type="Windows" if n == 7 else "Linux",
            tags={"env": "prod" if n % 2 else "dev"}))
    return ids


def devices(engine) -> dict[str, Device]:
    with Session(engine) as s:
        return {d.external_id: d for d in s.exec(select(Device))}


def test_vms_with_power_state_and_nic_addresses_over_many_pages(store, arm, cert, token):
    ids = populate(arm)
    result = import_account(account(arm, cert))
    assert (result.listed, result.added) == (23, 23)
    assert arm.pages == {VMS: 5, PIPS: 2, NICS: 5}  # nextLink followed on every listing
    found = devices(store)
    assert set(found) == set(ids)
    win = found[ids[7]]
    assert (win.platform, win.site, win.address, win.instance_state) == \
        ("windows", "westeurope", "10.1.0.11", "running")
    assert found[ids[0]].instance_state == "deallocated" and found[ids[0]].site == "eastus"
    assert {h.get("authorization") for _, _, h in arm.peer.requests} == {f"Bearer {TOKEN}"}
    assert import_account(account(arm, cert)).unchanged == 23


def test_public_address_tag_state_and_location_filters(store, arm, cert, token):
    populate(arm)
    acct = account(arm, cert, address="public", tag_filters={"env": "dev"}, states=["running"],
                   regions=["westeurope"])
    result = import_account(acct)
    # dev = even n; running = n % 5; westeurope = n % 3; public only for n % 4 == 0
    expected = [n for n in range(23) if n % 2 == 0 and n % 5 and n % 3]
    with_public = [n for n in expected if n % 4 == 0]
    assert (result.added, result.skipped) == (len(with_public), len(expected) - len(with_public))
    assert all(c.detail == "no public address" for c in result.changes if c.action == "skipped")
    for d in devices(store).values():
        assert d.address.startswith("20.0.0.") and d.tags == {"env": "dev"}


def test_instance_view_asked_per_vm_when_the_listing_lacks_it(store, arm, cert, token):
    populate(arm, count=3)
    arm.without_instance_view = True
    import_account(account(arm, cert))
    assert {d.instance_state for d in devices(store).values()} == {"deallocated", "running"}
    assert sum(p.split("?")[0].endswith("/instanceView") for _, p, _ in arm.peer.requests) == 3


def test_deleted_vm_marked_removed_and_credentials_kept(store, arm, cert, token):
    ids = populate(arm, count=4)
    import_account(account(arm, cert))
    victim = devices(store)[ids[2]]
    with Session(store) as s:
        s.add(Credential(device_id=victim.id, username="azureadmin"))
        s.commit()
    arm.remove_vm(ids[2])
    result = import_account(account(arm, cert))
    assert (result.removed, result.unchanged) == (1, 3)
    gone = devices(store)[ids[2]]
    assert (gone.active, gone.instance_state) == (False, "removed")
    with Session(store) as s:
        assert s.exec(select(Credential)).one().device_id == victim.id
    arm.add_vm(2, group="rg-a", private="10.1.0.6")  # the same VM back: restored
    back = import_account(account(arm, cert))
    assert back.updated == 1 and [c.action for c in back.changes] == ["restored"]
    assert devices(store)[ids[2]].active


def test_refused_token_untrusted_certificate_and_missing_subscription(store, arm, cert, token,
                                                                       tmp_path):
    populate(arm, count=2)
    with Session(store) as s:
        put_entry(s, "azure-key", {"access_token": "wrong"})
        s.commit()
    with pytest.raises(CloudError, match="HTTP 401 InvalidAuthenticationToken"):
        import_account(account(arm, cert))
    with Session(store) as s:
        put_entry(s, "azure-key", {"access_token": TOKEN})
        s.commit()
    other, _, _ = self_signed(tmp_path, "other")
    with pytest.raises(CloudError, match="listing virtual machines failed: ServiceRequestError"):
        import_account(account(arm, cert, ca_file=str(other)))  # verification stays on
    with pytest.raises(CloudError, match="subscription id is not set"):
        import_account(account(arm, cert, subscription_id=None))
    assert devices(store) == {}


@pytest.mark.parametrize("fault,match", [
    ({"fail_next": [429] * 20}, "HTTP 429 TooManyRequests: throttled"),
    ({"fail_next": [503] * 20}, "HTTP 503"),
    ({"garbage": b"\x00\xff<html>not json"}, "listing virtual machines failed"),
    ({"garbage": b'{"value": "not a list"}'}, "listing virtual machines failed"),
    ({"garbage": b'{"value": [' + b"[" * 50_000 + b"]}"}, "listing virtual machines failed"),
])
def test_throttling_and_garbage_write_nothing(store, arm, cert, token, fault, match):
    populate(arm, count=4)
    assert import_account(account(arm, cert)).added == 4
    before = len(arm.peer.requests)
    for k, v in fault.items():
        setattr(arm, k, v)
    with pytest.raises(CloudError, match=match) as err:
        import_account(account(arm, cert))
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)
    assert all(d.active for d in devices(store).values())
    if "fail_next" in fault:
        assert len(arm.peer.requests) - before == 3  # max_attempts


def test_throttled_then_answering_imports(store, arm, cert, token):
    populate(arm, count=4)
    arm.fail_next = [429, 503]
    assert import_account(account(arm, cert)).added == 4


def test_hostile_vms_cleaned_or_rejected(store, arm, cert, token):
    arm.add_vm(1, name="'; DROP TABLE device;--", tags={"\u202ek" * 100: "<b>" * 1000},
               private="10.9.0.1")
    arm.add_vm(2, private="10.9.0.2")
    arm.vms[-1]["properties"]["vmId"] = "../../etc/passwd;"
    arm.add_vm(3, private="10.9.0.999")
    arm.vms.append({"id": 42, "name": ["odd"], "properties": "not an object"})
    result = import_account(account(arm, cert))
    assert (result.added, result.skipped) == (1, 3)
    [dev] = devices(store).values()
    assert dev.name == "'; DROP TABLE device;--"
    [(key, value)] = dev.tags.items()
    assert key == "k" * 100 and value == ("<b>" * 1000)[:256]


def test_the_same_import_on_postgresql(pg_store, arm, cert, token):
    ids = populate(arm, count=6)
    assert import_account(account(arm, cert)).added == 6
    arm.remove_vm(ids[0])
    assert import_account(account(arm, cert)).removed == 1
    assert pg_store.url.get_backend_name() == "postgresql"
