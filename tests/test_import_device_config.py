"""Import columns that configure the fast path (admin and reconcile accounts, change port,
sudo mode, pinned host key, maintenance mode) and the header rules for common exports
(``hostname`` beside ``ip``), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow import inventory
from pamflow.hostkeys import ssh_port
from pamflow.inventory import ImportFileError
from pamflow.models import AuditLog, Credential, Device, HostKey
from pamflow.targets.ssh import SUDO_MODES
from tests.test_host_keys import fingerprint_of, public_line


@pytest.fixture(autouse=True)
def _uploads(tmp_path, monkeypatch):
    monkeypatch.setenv("PAMFLOW_UPLOAD_DIR", str(tmp_path))
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request):
    return request.getfixturevalue("store" if request.param == "sqlite" else "pg_store")


def write(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)
    return path


def device(engine, address: str) -> Device:
    with Session(engine) as s:
        return s.exec(select(Device).where(Device.address == address)).one()


def cred_id(engine, address: str, username: str) -> int:
    with Session(engine) as s:
        return s.exec(select(Credential.id).join(Device, Device.id == Credential.device_id).where(
            Device.address == address, Credential.username == username)).one()


def snapshot(engine):
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]
                for t in ("device", "credential", "host_key")}


# -- headers ---------------------------------------------------------------------------------

def test_hostname_beside_an_ip_column_is_the_name(store, tmp_path):
    """The usual inventory export: ``hostname`` and ``ip``. Refused as a whole before
    ("column 'address' appears twice"); now the hostname is the device's name."""
    path = write(tmp_path / "export.csv", ["Hostname", "IP", "Username", "Password"],
                 [["web1.corp", "10.60.0.1", "root", "Export-Secret-1"],
                  ["db1.corp", "10.60.0.2", "root", "Export-Secret-2"]])
    result = inventory.import_file(path, store)
    assert (result.created, result.rejected, result.ignored_columns) == (2, 0, [])
    assert (device(store, "10.60.0.1").name, device(store, "10.60.0.2").name) == ("web1.corp",
                                                                                  "db1.corp")


def test_hostname_beside_address_and_name_is_ignored_and_said_so(store, tmp_path):
    path = write(tmp_path / "three.csv", ["name", "hostname", "address"],
                 [["web one", "web1.corp", "10.60.1.1"]])
    result = inventory.import_file(path, store)
    assert result.created == 1 and device(store, "10.60.1.1").name == "web one"
    assert result.ignored_columns == ["hostname (other columns give the address and the name)"]


def test_host_alone_is_still_the_address_and_port_beside_ports_is_the_change_port(store, tmp_path):
    path = write(tmp_path / "hosts.csv", ["host", "ports", "port"], [["10.60.2.1", "22;443", "2222"]])
    assert inventory.import_file(path, store).created == 1
    dev = device(store, "10.60.2.1")
    assert (dev.ports, dev.settings) == ([22, 443], {"port": 2222})
    path = write(tmp_path / "port.csv", ["hostname", "port"], [["10.60.2.2", "2222"]])
    assert inventory.import_file(path, store).created == 1
    assert device(store, "10.60.2.2").ports == [2222]  # alone, ``port`` is the ports


@pytest.mark.parametrize("header, named", [
    (["ip", "address"], "'ip' (column 1) and 'address' (column 2) both mean 'address'"),
    (["host", "hostname"], "'host' (column 1) and 'hostname' (column 2) both mean 'address'"),
    (["address", "user", "username"], "'user' (column 2) and 'username' (column 3) both mean "
                                      "'username'"),
    (["address", "Address"], "column 'address' appears twice in the header (columns 1 and 2)"),
])
def test_a_truly_ambiguous_header_is_refused_naming_the_columns(store, tmp_path, header, named):
    path = write(tmp_path / "amb.csv", header, [["10.60.3.1"] * len(header)])
    with pytest.raises(ImportFileError) as info:
        inventory.import_file(path, store)
    assert named in str(info.value)


# -- device configuration ----------------------------------------------------------------------

HEADER = ["hostname", "ip", "platform", "username", "password", "admin_username",
          "reconcile_username", "ssh_port", "sudo", "host_key", "maintenance"]


@pytest.mark.parametrize("chunk_size", [5000, 1], ids=["one-chunk", "a-chunk-per-row"])
def test_admin_reconcile_port_sudo_and_host_key_are_imported_idempotently(any_store, tmp_path,
                                                                          chunk_size):
    """In one chunk, and with every row its own chunk (the admin account comes in a later
    chunk than the row naming it)."""
    key = public_line()
    rows = [
        # the admin account is defined by a later row of the same device
        ["web1", "10.61.0.1", "linux", "app", "App-Secret-1", "pamadmin", "", "2222", "password",
         key, ""],
        ["web1", "10.61.0.1", "linux", "pamadmin", "Admin-Secret-1", "", "pamrecon", "", "", "", ""],
        ["web1", "10.61.0.1", "linux", "pamrecon", "Recon-Secret-1", "", "", "", "", "", ""],
        # a device-only row: accounts defined elsewhere, maintenance on
        ["db1", "10.61.0.2", "", "", "", "", "", "", "", "", "yes"],
    ]
    path = write(tmp_path / "fast.csv", HEADER, rows)
    result = inventory.import_file(path, any_store, chunk_size=chunk_size)
    assert (result.created, result.rejected) == (4, 0), result.errors
    web = device(any_store, "10.61.0.1")
    assert web.admin_credential_id == cred_id(any_store, "10.61.0.1", "pamadmin")
    assert web.reconcile_credential_id == cred_id(any_store, "10.61.0.1", "pamrecon")
    assert (web.settings, web.maintenance_mode, web.name) == ({"port": 2222, "sudo": "password"},
                                                              False, "web1")
    assert device(any_store, "10.61.0.2").maintenance_mode is True
    with Session(any_store) as s:
        [hk] = s.exec(select(HostKey).where(HostKey.device_id == web.id)).all()
        assert (hk.port, hk.fingerprint) == (2222, fingerprint_of(key))  # the change port
        [pinned] = s.exec(select(AuditLog).where(AuditLog.action == "pin_host_key")).all()
        assert pinned.entity_id == str(web.id) and pinned.actor == "batch-import"

    before = snapshot(any_store)
    result = inventory.import_file(path, any_store)
    assert (result.unchanged, result.updated, result.created) == (4, 0, 0)
    assert snapshot(any_store) == before
    with Session(any_store) as s:
        assert len(s.exec(select(AuditLog).where(AuditLog.action == "pin_host_key")).all()) == 1


def test_a_later_file_points_a_stored_device_at_a_stored_account(store, tmp_path):
    write(tmp_path / "a.csv", ["address", "username", "password"],
          [["10.62.0.1", "root", "Root-Secret-1"], ["10.62.0.1", "app", "App-Secret-1"]])
    inventory.import_file(tmp_path / "a.csv", store)
    updated_at = device(store, "10.62.0.1").updated_at
    path = write(tmp_path / "b.csv", ["ip", "admin", "sudo"], [["10.62.0.1", "root", "NOPASSWD"]])
    result = inventory.import_file(path, store)
    assert (result.updated, result.devices_updated, result.rejected) == (1, 1, 0)
    dev = device(store, "10.62.0.1")
    assert dev.admin_credential_id == cred_id(store, "10.62.0.1", "root")
    assert dev.settings == {"sudo": "nopasswd"} and dev.updated_at > updated_at
    # an empty cell keeps, another account moves the role
    path = write(tmp_path / "c.csv", ["ip", "admin", "sudo"], [["10.62.0.1", "app", ""]])
    assert inventory.import_file(path, store).updated == 1
    dev = device(store, "10.62.0.1")
    assert dev.admin_credential_id == cred_id(store, "10.62.0.1", "app")
    assert dev.settings == {"sudo": "nopasswd"}


BAD = [
    ({"admin_username": "ghost"}, "admin_username",
     "admin_username: 'ghost' is not an account of device 10.63.0.1; add the admin account first"),
    ({"reconcile_username": "ghost"}, "reconcile_username", "'ghost' is not an account of device"),
    ({"ssh_port": "70000"}, "change_port", "change_port '70000' is not a port number in 1-65535"),
    ({"ssh_port": "ssh"}, "change_port", "is not a port number"),
    ({"sudo": "always"}, "sudo", "sudo 'always' is not one of nopasswd, password, none"),
    ({"sudo": "password", "platform": "windows"}, "sudo",
     "sudo applies to devices changed over SSH; 10.63.0.1 is changed over winrm"),
    ({"host_key": "ssh-ed25519 AAAA%%"}, "host_key", "host_key: the ssh-ed25519 key is not valid"),
    ({"host_key": public_line(), "platform": "ldap"}, "host_key",
     "host_key applies to devices changed over SSH; 10.63.0.1 is changed over ldap"),
    ({"maintenance": "sometimes"}, "maintenance_mode", "is not true/false"),
    ({"admin_username": "x\x07"}, "admin_username", "control characters"),
]


@pytest.mark.parametrize("cells, column, reason", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_each_bad_cell_rejects_its_row_with_the_reason(store, tmp_path, cells, column, reason):
    good = {"ip": "10.63.0.2", "username": "root", "password": "Fine-Secret-1"}
    bad = {"ip": "10.63.0.1", "username": "root", "password": "Bad-Secret-1", **cells}
    header = ["ip", "platform", "username", "password", "admin_username", "reconcile_username",
              "ssh_port", "sudo", "host_key", "maintenance"]
    path = write(tmp_path / "bad.csv", header, [[good.get(h, "") for h in header],
                                                [bad.get(h, "") for h in header]])
    result = inventory.import_file(path, store)
    assert result.created == 1 and result.rejected == 1
    [error] = result.errors
    assert (error.row, error.column) == (3, column) and reason in error.reason, error
    with Session(store) as s:
        assert [d.address for d in s.exec(select(Device))] == ["10.63.0.2"]
        assert "Bad-Secret-1" not in repr(result.errors)


def test_the_sudo_modes_are_the_ssh_targets():
    assert inventory.SUDO_MODES == SUDO_MODES


def test_the_pinned_port_is_the_one_rotation_connects_to():
    """A device probed on FTP and SSH is changed over 22, not its first port: the host key
    is pinned (and checked) there."""

    class Dev:
        def __init__(self, ports, settings):
            self.ports, self.settings = ports, settings

    assert ssh_port(Dev([21, 22], {})) == 22
    assert ssh_port(Dev([2222, 3389], {})) == 2222
    assert ssh_port(Dev([22], {"port": 2200})) == 2200
    assert ssh_port(Dev([], {})) == 22
