"""Pinned SSH host keys (pamflow.hostkeys, ``pamflow devices pin-host-key``) against a real sshd.

A pinned key is checked on the very first connection: the right one lets rotation run and
records nothing new; a wrong one stops the connection at step ``host key`` before the
server sees any user name or password (its log shows no authentication attempt).
"""

from __future__ import annotations

import base64
import logging
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow import audit
from pamflow.cli import app
from pamflow.hostkeys import HostKeyError, parse_host_key, pin_host_key, recorded_host_keys
from pamflow.models import AuditLog, Device, HostKey
from pamflow.operations import queue
from pamflow.operations.executor import drain
from pamflow.targets.base import Change, Endpoint, HostKeyChanged, Login
from pamflow.targets.ssh import SSHTarget, StoreHostKeys
from tests.test_rotation import (  # noqa: F401  (autouse fixture)
    _quiet_events,
    add_credential,
    make_device,
    nasty,
    operations,
    recorded,
    secret_of,
    ssh_login,
)

runner = CliRunner()


def public_line(kind: str = "ed25519", comment: str = "") -> str:
    """A fresh OpenSSH public key line (not any server's key)."""
    key = {"ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
           "ecdsa256": lambda: ec.generate_private_key(ec.SECP256R1()),
           "ecdsa384": lambda: ec.generate_private_key(ec.SECP384R1()),
           "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)}[kind]()
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


def fingerprint_of(line: str) -> str:
    import hashlib

    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def host_keys(engine, device_id: int) -> list[HostKey]:
    with Session(engine) as s:
        return list(s.exec(select(HostKey).where(HostKey.device_id == device_id)
                           .order_by(HostKey.id)))


def run(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


# -- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, key_type", [("ed25519", "ssh-ed25519"),
                                            ("ecdsa256", "ecdsa-sha2-nistp256"),
                                            ("ecdsa384", "ecdsa-sha2-nistp384"),
                                            ("rsa", "ssh-rsa")])
def test_public_key_lines_of_each_type_parse(kind, key_type):
    line = public_line(kind, "root@host")
    parsed = parse_host_key(line)
    assert (parsed.key_type, parsed.key_base64, parsed.port) == (key_type, line.split()[1], None)
    assert parsed.fingerprint == fingerprint_of(line)


def test_known_hosts_lines_give_the_port():
    line = public_line()
    assert parse_host_key(f"[10.0.0.5]:2222,[db1]:2222 {line}").port == 2222
    assert parse_host_key(f"10.0.0.5,db1 {line} a comment").port is None
    assert parse_host_key(f"|1|c2FsdA==|aGFzaA== {line}").port is None  # hashed host names
    assert parse_host_key(f"  {line}  ").key_base64 == line.split()[1]


@pytest.mark.parametrize("text, reason", [
    ("", "no host key given"),
    ("   ", "no host key given"),
    ("ssh-ed25519", "expected a key type and its base64 data"),
    ("ssh-ed25519 AAAA%%%notbase64", "not valid base64"),
    ("ssh-foo AAAAB3NzaC1yc2E=", "unknown host key type 'ssh-foo'"),
    ("rsa-sha2-512 AAAAB3NzaC1yc2E=", "unknown host key type"),
    ("ssh-ed25519-cert-v01@openssh.com AAAA", "is a certificate"),
    ("@cert-authority *.example ssh-ed25519 AAAA", "@cert-authority lines are not host keys"),
    ("@revoked * ssh-ed25519 AAAA", "@revoked lines are not host keys"),
    ("[a]:22,[b]:2222 ssh-ed25519 AAAA", "several ports"),
    ("[a]:70000 ssh-ed25519 AAAA", "70000 is not a port number"),
    ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "one line"),
])
def test_malformed_lines_are_refused_with_the_reason(text, reason):
    with pytest.raises(HostKeyError) as info:
        parse_host_key(text)
    assert reason in str(info.value)


def test_key_data_must_be_exactly_a_key_of_its_type():
    line = public_line()
    blob = base64.b64decode(line.split()[1])
    for bad in (blob[:-1], blob + b"x", blob[:20]):  # wrong length, trailing bytes, truncated
        with pytest.raises(HostKeyError) as info:
            parse_host_key(f"ssh-ed25519 {base64.b64encode(bad).decode()}")
        assert "not a valid ssh-ed25519 key" in str(info.value)
    with pytest.raises(HostKeyError) as info:  # an ed25519 key labelled as RSA
        parse_host_key(f"ssh-rsa {line.split()[1]}")
    assert "not a valid ssh-rsa key" in str(info.value)


# -- pinning in the store -----------------------------------------------------------------------

def _device(engine, **fields) -> Device:
    with Session(engine, expire_on_commit=False) as s:
        dev = Device(name=fields.pop("name", f"srv-{secrets.token_hex(3)}"), address="10.1.2.3",
                     **fields)
        s.add(dev)
        s.commit()
        return dev


def test_pin_replaces_what_was_recorded_and_is_audited(store):
    dev = _device(store, ports=[2222, 80])
    first_seen, pinned = public_line(), public_line("ecdsa256")
    StoreHostKeys(store).record(dev.id, 2222, "ssh-ed25519", first_seen.split()[1],
                                fingerprint_of(first_seen))

    row = pin_host_key(store, dev.id, None, pinned, actor="alice")

    assert (row.port, row.key_type, row.fingerprint) == (2222, "ecdsa-sha2-nistp256",
                                                         fingerprint_of(pinned))
    assert [(k.port, k.key_base64) for k in host_keys(store, dev.id)] == [(2222, pinned.split()[1])]
    [recorded_key] = recorded_host_keys(store, dev.id)
    assert recorded_key.pinned_by == "alice"
    with Session(store) as s:
        [entry] = s.exec(select(AuditLog).where(AuditLog.action == "pin_host_key")).all()
        assert (entry.actor, entry.entity, entry.entity_id) == ("alice", "device", str(dev.id))
        assert entry.detail == {"port": 2222, "key_type": "ecdsa-sha2-nistp256",
                                "fingerprint": fingerprint_of(pinned),
                                "replaced": [f"ssh-ed25519 {fingerprint_of(first_seen)}"]}
        assert audit.verify_chain(s) is None
    # an explicit port, and a known_hosts port that contradicts it
    pin_host_key(store, dev.id, 22, first_seen)
    assert {k.port for k in host_keys(store, dev.id)} == {22, 2222}
    with pytest.raises(HostKeyError, match="for port 2200, not 22"):
        pin_host_key(store, dev.id, 22, f"[10.1.2.3]:2200 {first_seen}")


def test_pin_is_refused_for_devices_without_ssh_and_unknown_devices(store):
    windows = _device(store, platform="windows", ports=[5986])
    with pytest.raises(HostKeyError, match="changed over winrm, not SSH"):
        pin_host_key(store, windows.id, None, public_line())
    with pytest.raises(HostKeyError, match="no device with id 999"):
        pin_host_key(store, 999, None, public_line())
    assert host_keys(store, windows.id) == []


# -- against the real sshd ---------------------------------------------------------------------

def test_pinned_key_is_checked_on_first_contact_and_rotation_runs(store, sshd, caplog):
    caplog.set_level(logging.INFO, logger="pamflow.targets.ssh")
    dev, _accounts = make_device(store, sshd)
    row = pin_host_key(store, dev.id, None, sshd.host_key_pub)  # before any connection
    assert row.port == sshd.port
    pw = nasty("pin")
    user = sshd.add_account(pw)
    cred = add_credential(store, dev, user, pw)
    queue.enqueue(store, "change", cred.id, requested_by="test")
    queue.enqueue(store, "verify", cred.id, requested_by="test")

    summary = drain(store)

    assert summary.succeeded == 2 and summary.failed == 0
    new = secret_of(store, cred.id)
    assert ssh_login(sshd.port, user, new) and not ssh_login(sshd.port, user, pw)
    # the pinned row is the only one, untouched: nothing was recorded on contact
    [only] = host_keys(store, dev.id)
    assert (only.id, only.first_seen_at, only.key_base64) == (row.id, row.first_seen_at,
                                                             row.key_base64)
    assert "recorded host key" not in caplog.text


@pytest.mark.parametrize("wrong", ["ed25519", "ecdsa256"])
def test_wrong_pinned_key_stops_before_any_user_or_password_is_sent(store, sshd, wrong):
    dev, accounts = make_device(store, sshd)
    admin_name, admin_pw = accounts["admin"]
    pin_host_key(store, dev.id, None, public_line(wrong))  # not the server's key
    pw = nasty("wrongkey")
    user = sshd.add_account(pw)
    cred = add_credential(store, dev, user, pw)
    target = SSHTarget(store)
    ep = Endpoint(dev.id, dev.name, "127.0.0.1", sshd.port, {})
    with pytest.raises(HostKeyChanged) as info:
        target.apply(ep, [Change(user, "New-pass-9x")], Login(admin_name, admin_pw), 10)
    with pytest.raises(HostKeyChanged):
        target.verify(ep, Login(user, pw), 10)
    assert info.value.step == "host key" and not info.value.retryable
    assert dev.name in str(info.value) and admin_pw not in str(info.value)

    queue.enqueue(store, "change", cred.id, requested_by="test")
    summary = drain(store)

    assert summary.failed == 1
    [op] = operations(store)
    assert "host key" in op.error and op.retryable is False
    # sshd never saw either user try to authenticate
    log = sshd.log
    assert admin_name not in log and user not in log, [
        ln for ln in log.splitlines() if admin_name in ln or user in ln]
    assert recorded(store, cred.id).pending_secret is None
    assert secret_of(store, cred.id) == pw and ssh_login(sshd.port, user, pw)
    assert len(host_keys(store, dev.id)) == 1  # still only the pinned one


def test_pinning_over_a_first_seen_key_takes_effect_in_a_running_target(store, sshd, admin_login):
    dev, _ = make_device(store, sshd, admin=False)
    ep = Endpoint(dev.id, dev.name, "127.0.0.1", sshd.port, {})
    target = SSHTarget(host_keys=StoreHostKeys(store, max_age=0))
    assert target.verify(ep, admin_login, 10)  # first contact records the server's key
    pin_host_key(store, dev.id, None, public_line())  # an operator pins another key
    with pytest.raises(HostKeyChanged):
        target.verify(ep, admin_login, 10)
    pin_host_key(store, dev.id, None, sshd.host_key_pub)
    assert target.verify(ep, admin_login, 10)


@pytest.fixture
def admin_login(sshd) -> Login:
    password = nasty("login")
    return Login(sshd.add_account(password), password)


# -- the CLI -----------------------------------------------------------------------------------

def test_cli_pins_lists_and_refuses_bad_keys(store, sshd, admin_login):
    res = run("devices", "add", "127.0.0.1", "--name", "pinned01", "--ports", str(sshd.port),
              "--host-key", sshd.host_key_pub)
    assert res.exit_code == 0, res.output
    fp = fingerprint_of(sshd.host_key_pub)
    assert f"host key pinned: port {sshd.port} ssh-ed25519 {fp}" in res.output
    with Session(store) as s:
        dev = s.exec(select(Device).where(Device.name == "pinned01")).one()
    [row] = host_keys(store, dev.id)
    assert row.key_base64 == sshd.host_key_pub.split()[1]
    # the pinned key is what the target checks on its first connection
    ep = Endpoint(dev.id, dev.name, "127.0.0.1", sshd.port, {})
    assert SSHTarget(store).verify(ep, admin_login, 10)
    assert [k.id for k in host_keys(store, dev.id)] == [row.id]

    res = run("devices", "host-keys", "pinned01")
    assert res.exit_code == 0, res.output
    assert fp in res.output and "pinned by cli" in res.output and str(sshd.port) in res.output

    # bad input: a clear reason, exit 1, nothing changed
    for args, reason in (
            (("pinned01", "ssh-ed25519 AAAA%%"), "not valid base64"),
            (("pinned01", "ssh-dsa AAAAB3NzaC1kc3M="), "unknown host key type"),
            (("pinned01", f"[127.0.0.1]:{sshd.port} {public_line()}", "--port", "22"),
             f"for port {sshd.port}, not 22"),
            (("nosuchdevice", sshd.host_key_pub), "no device 'nosuchdevice'")):
        res = run("devices", "pin-host-key", *args)
        assert res.exit_code == 1 and reason in res.output, res.output
        assert "Traceback" not in res.output
    assert [k.id for k in host_keys(store, dev.id)] == [row.id]

    # a wrong key pinned through the CLI stops the next connection
    other = public_line()
    res = run("devices", "pin-host-key", str(dev.id), f"[127.0.0.1]:{sshd.port} {other}")
    assert res.exit_code == 0, res.output
    assert f"pinned ssh-ed25519 {fingerprint_of(other)}" in res.output
    assert f"replaced ssh-ed25519 {fp}" in res.output
    with pytest.raises(HostKeyChanged):
        SSHTarget(store).verify(ep, admin_login, 10)

    # --host-key on a device that has no SSH: refused before the device is written
    res = run("devices", "add", "10.9.9.9", "--platform", "windows", "--host-key", other)
    assert res.exit_code == 1 and "changed over winrm, not SSH" in res.output
    res = run("devices", "add", "10.9.9.8", "--host-key", "ssh-ed25519 nope")
    assert res.exit_code == 1 and "host_key:" in res.output
    with Session(store) as s:
        assert s.exec(select(Device).where(Device.address.in_(["10.9.9.9", "10.9.9.8"]))).all() \
            == []
