"""The SSH password target against a real OpenSSH sshd with real Linux accounts."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pamflow.models import Device, HostKey
from pamflow.platform import free_port
from pamflow.targets.base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    Endpoint,
    HostKeyChanged,
    InvalidSetting,
    Login,
    Unreachable,
)
from pamflow.targets.ssh import TRANSPORT_LOG, MemoryHostKeys, SSHTarget, StoreHostKeys
from tests.peers.sshd import SSHD
from tests.peers.tap import Tap

pytestmark = pytest.mark.usefixtures("needs_sshd")  # fails, never skips, without root/sshd

NASTY = ["it's \"quoted\"", "$HOME $(id) ${PATH}", "`id` back`tick", "back\\slash\\\\n",
         "  spaces  inside  ", "100% %s %n %%"]


def nasty_password(i: int) -> str:
    """A password full of shell and format metacharacters, different each call."""
    return f"{NASTY[i % len(NASTY)]}-{secrets.token_urlsafe(6)}"


@pytest.fixture
def device(store) -> Device:
    with Session(store) as s:
        dev = Device(name=f"ssh-{secrets.token_hex(3)}", address="127.0.0.1")
        s.add(dev)
        s.commit()
        s.refresh(dev)
        return dev


@pytest.fixture
def target(store) -> SSHTarget:
    return SSHTarget(store)


@pytest.fixture
def admin(sshd) -> Login:
    password = nasty_password(0)
    return Login(sshd.add_account(password, sudo_chpasswd=True), password)


@pytest.fixture
def sudoers_file():
    """A sudoers drop-in of this test's own, removed afterwards."""
    path = Path(f"/etc/sudoers.d/pamflow-ssh-target-{secrets.token_hex(3)}")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def world_writable_dir():
    path = Path(tempfile.mkdtemp(prefix="pamflow-ssh-test-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_sshd():
    """A private sshd (for host-key changes); accounts come from the session fixture."""
    server = SSHD.start()
    try:
        yield server
    finally:
        server.stop()  # its own accounts and sudoers drop-in only


def endpoint(device: Device, port: int, **settings) -> Endpoint:
    return Endpoint(device.id, device.name, "127.0.0.1", port, settings)


def logs_in(port: int, username: str, password: str) -> bool:
    """An independent check (fresh target, host keys in memory)."""
    probe = SSHTarget(host_keys=MemoryHostKeys())
    return probe.verify(Endpoint(0, "probe", "127.0.0.1", port), Login(username, password), 10)


def test_admin_changes_several_accounts_in_one_call(sshd, store, device, target, admin, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=TRANSPORT_LOG)  # paramiko's own debug lines too
    old: dict[str, str] = {}
    for i in range(len(NASTY)):
        password = nasty_password(i)
        old[sshd.add_account(password)] = password
    new = {name: nasty_password(i + 1) for i, name in enumerate(old)}
    ep = endpoint(device, sshd.port)

    results = target.apply(ep, [Change(n, p) for n, p in new.items()], admin, timeout=10)

    assert [r.username for r in results] == list(new)
    assert all(r.ok for r in results), [str(r.error) for r in results]
    with ThreadPoolExecutor(16) as pool:  # a refused login takes ~2 s (pam_faildelay)
        assert list(pool.map(lambda n: target.verify(ep, Login(n, new[n]), 10), new)) \
            == [True] * len(new)
        assert list(pool.map(lambda n: target.verify(ep, Login(n, old[n]), 10), new)) \
            == [False] * len(new)
    # the host key was recorded on first contact, once
    with Session(store) as s:
        keys = s.exec(select(HostKey).where(HostKey.device_id == device.id)).all()
    assert [(k.port, k.key_type) for k in keys] == [(sshd.port, "ssh-ed25519")]
    assert sshd.host_key_pub.split()[1] == keys[0].key_base64
    assert keys[0].fingerprint.startswith("SHA256:")
    assert "Authentication (password) successful" in caplog.text  # the debug lines were there
    for secret in [admin.secret, *old.values(), *new.values()]:
        assert secret not in caplog.text


def test_unknown_account_in_batch_fails_alone(sshd, device, target, admin):
    good = {sshd.add_account(nasty_password(i)): nasty_password(i + 2) for i in range(2)}
    changes = [Change(list(good)[0], good[list(good)[0]]), Change("pfnosuchuser", "Whatever-1x"),
               Change(list(good)[1], good[list(good)[1]])]

    results = target.apply(endpoint(device, sshd.port), changes, admin, timeout=10)

    assert [r.ok for r in results] == [True, False, True]
    err = results[1].error
    assert isinstance(err, ChangeRefused)
    assert err.account == "pfnosuchuser" and err.device == device.name and err.step == "chpasswd"
    assert "Whatever-1x" not in str(err)
    for name, pw in good.items():
        assert logs_in(sshd.port, name, pw)


def test_batch_failing_as_a_whole_is_isolated_per_account(sshd, device, target, tmp_path):
    """A chpasswd that ignores the whole batch on one bad line (shadow without PAM does).

    It stands in for /usr/sbin/chpasswd in a private sshd's mount namespace: the chpasswd
    setting only accepts the real paths.
    """
    real = tmp_path / "chpasswd.real"
    shutil.copy2("/usr/sbin/chpasswd", real)
    wrapper = tmp_path / "chpasswd-whole-batch"
    wrapper.write_text(
        "#!/bin/sh\n"
        "input=$(cat)\n"
        'echo "$input" | while IFS=: read -r user rest; do\n'
        '  id "$user" >/dev/null 2>&1 || { echo "chpasswd: unknown user $user" >&2; exit 1; }\n'
        "done || { echo 'chpasswd: error detected, changes ignored' >&2; exit 1; }\n"
        f'printf "%s\\n" "$input" | {real}\n')
    wrapper.chmod(0o755)
    server = SSHD.start(bind_mounts={"/usr/sbin/chpasswd": wrapper})
    try:
        password = nasty_password(3)
        admin_name = server.add_account(password, sudo_chpasswd=True)
        good = {sshd.add_account("Old-pass-1x"): nasty_password(i) for i in range(2)}
        names = list(good)
        changes = [Change(names[0], good[names[0]]), Change("pfnosuchuser", "Whatever-1x"),
                   Change(names[1], good[names[1]])]

        results = target.apply(endpoint(device, server.port), changes,
                               Login(admin_name, password), timeout=10)

        assert [r.ok for r in results] == [True, False, True]
        assert "unknown user pfnosuchuser" in str(results[1].error)
        for name, pw in good.items():
            assert logs_in(sshd.port, name, pw)
    finally:
        server.stop()


def test_self_service_change_with_passwd(sshd, device, target, caplog):
    caplog.set_level(logging.DEBUG)
    old = [nasty_password(i) for i in range(3)]
    new = [nasty_password(i + 3) for i in range(3)]
    names = [sshd.add_account(pw) for pw in old]

    results = target.apply(endpoint(device, sshd.port),
                           [Change(n, nw, od) for n, nw, od in zip(names, new, old, strict=True)],
                           None, timeout=10)

    assert all(r.ok for r in results), [str(r.error) for r in results]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda n, p: logs_in(sshd.port, n, p), names, new)) == [True] * 3
        assert list(pool.map(lambda n, p: logs_in(sshd.port, n, p), names, old)) == [False] * 3
    for secret in old + new:
        assert secret not in caplog.text


def test_self_service_with_wrong_current_password(sshd, device, target):
    old = nasty_password(1)
    name = sshd.add_account(old)

    [result] = target.apply(endpoint(device, sshd.port),
                            [Change(name, nasty_password(2), "not-the-password")], None, timeout=10)

    assert isinstance(result.error, AuthenticationFailed)
    assert result.error.account == name and "not-the-password" not in str(result.error)
    assert logs_in(sshd.port, name, old)


def test_self_service_new_password_refused_by_pam(sshd, device, target):
    old = "Correct-Horse-42-battery"
    name = sshd.add_account(old)

    [result] = target.apply(endpoint(device, sshd.port), [Change(name, "ab", old)], None,
                            timeout=10)

    assert isinstance(result.error, ChangeRefused)
    assert result.error.step == "passwd"
    assert logs_in(sshd.port, name, old)


def test_sudo_with_a_password_prompt(sshd, device, target, sudoers_file, caplog):
    caplog.set_level(logging.DEBUG)
    password = nasty_password(4)
    admin_name = sshd.add_account(password)
    sudoers_file.write_text(f"{admin_name} ALL=(root) /usr/sbin/chpasswd\n")
    sudoers_file.chmod(0o440)
    name = sshd.add_account("Old-pass-1x")
    new = nasty_password(5)
    ep = endpoint(device, sshd.port, sudo="password")

    [result] = target.apply(ep, [Change(name, new)], Login(admin_name, password), timeout=10)

    assert result.ok, str(result.error)
    assert logs_in(sshd.port, name, new)
    assert password not in caplog.text and new not in caplog.text


def test_sudo_without_rights_is_a_clear_refusal(sshd, device, target):
    password = nasty_password(2)
    admin_name = sshd.add_account(password)  # no sudoers rule
    name = sshd.add_account("Old-pass-1x")

    with pytest.raises(ChangeRefused) as info:
        target.apply(endpoint(device, sshd.port), [Change(name, "New-pass-1x")],
                     Login(admin_name, password), timeout=10)

    assert "sudo" in str(info.value) and info.value.device == device.name
    assert "New-pass-1x" not in str(info.value)
    assert logs_in(sshd.port, name, "Old-pass-1x")


def test_wrong_admin_password(sshd, device, target, admin, caplog):
    caplog.set_level(logging.DEBUG)
    name = sshd.add_account("Old-pass-1x")
    wrong = nasty_password(5)

    with pytest.raises(AuthenticationFailed) as info:
        target.apply(endpoint(device, sshd.port), [Change(name, "New-pass-2x")],
                     Login(admin.username, wrong), timeout=10)

    err = info.value
    assert err.device == device.name and err.account == admin.username and err.step == "admin login"
    assert wrong not in str(err) and "New-pass-2x" not in str(err)
    assert wrong not in caplog.text and "New-pass-2x" not in caplog.text
    assert logs_in(sshd.port, name, "Old-pass-1x")


def test_closed_port_is_unreachable(device, target):
    ep = endpoint(device, free_port())
    with pytest.raises(Unreachable) as info:
        target.verify(ep, Login("someone", "Secret-1x"), 5)
    assert info.value.retryable and info.value.device == device.name
    with pytest.raises(Unreachable):
        target.apply(ep, [Change("someone", "Secret-2x")], Login("admin", "Secret-3x"), 5)
    with pytest.raises(Unreachable):
        target.apply(ep, [Change("someone", "Secret-2x", "Secret-1x")], None, 5)


def test_silent_port_times_out_as_unreachable(device, target):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the TCP connection but never says a word
    try:
        with pytest.raises(Unreachable) as info:
            target.verify(endpoint(device, listener.getsockname()[1]), Login("u", "Secret-1x"), 1)
        assert "Secret-1x" not in str(info.value)
    finally:
        listener.close()


def test_host_key_changed_stops_before_anything_is_sent(sshd, own_sshd, store, device, admin,
                                                        caplog):
    caplog.set_level(logging.DEBUG)
    name = sshd.add_account("Old-pass-1x")  # users are system-wide: they log in to own_sshd too
    ep = endpoint(device, own_sshd.port)
    assert SSHTarget(store).verify(ep, Login(name, "Old-pass-1x"), 10)  # first contact

    own_sshd.restart_with_new_host_key()
    target = SSHTarget(store)  # a fresh process would read the recorded key from the store
    with pytest.raises(HostKeyChanged) as info:
        target.apply(ep, [Change(name, "New-pass-3x")], admin, timeout=10)

    text = str(info.value)
    assert device.name in text and str(own_sshd.port) in text and "SHA256:" in text
    assert admin.secret not in text and "New-pass-3x" not in text
    assert not info.value.retryable and info.value.step == "host key"
    with pytest.raises(HostKeyChanged):
        target.verify(ep, Login(name, "Old-pass-1x"), 10)
    assert logs_in(own_sshd.port, name, "Old-pass-1x")
    assert not logs_in(own_sshd.port, name, "New-pass-3x")
    assert admin.secret not in caplog.text

    # an operator accepts the new key by removing the recorded one: the same target follows
    with Session(store) as s:
        for row in s.exec(select(HostKey).where(HostKey.device_id == device.id)).all():
            s.delete(row)
        s.commit()
    assert target.verify(ep, Login(name, "Old-pass-1x"), 10)


def test_concurrent_first_contact_records_one_key(sshd, store, device, admin):
    target = SSHTarget(host_keys=StoreHostKeys(store))
    ep = endpoint(device, sshd.port)
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda i: target.verify(ep, admin if i % 2 else
                                                         Login(admin.username, "wrong-1x"), 10),
                                 range(16)))
    assert outcomes == [bool(i % 2) for i in range(16)]
    with Session(store) as s:
        assert len(s.exec(select(HostKey).where(HostKey.device_id == device.id)).all()) == 1


def test_malformed_change_is_refused_alone(sshd, device, target, admin):
    name = sshd.add_account("Old-pass-1x")
    results = target.apply(endpoint(device, sshd.port),
                           [Change("bad:name", "Whatever-1x"), Change(name, "line\nbreak"),
                            Change(name + "x", "")], admin, timeout=10)
    assert [type(r.error) for r in results] == [ChangeRefused] * 3
    assert "line\nbreak" not in " ".join(str(r.error) for r in results)
    assert logs_in(sshd.port, name, "Old-pass-1x")


def test_default_constructor_uses_the_configured_store(store, sshd, device, admin):
    assert os.environ["PAMFLOW_DATABASE_URL"].startswith("sqlite")
    assert SSHTarget().verify(endpoint(device, sshd.port), admin, 10)
    with Session(store) as s:
        assert s.exec(select(HostKey).where(HostKey.device_id == device.id)).first() is not None


@pytest.mark.parametrize("setting, value", [
    ("chpasswd", "/usr/sbin/chpasswd; touch {marker}"),
    ("chpasswd", "/usr/sbin/chpasswd$(touch {marker})"),
    ("chpasswd", "/tmp/my-chpasswd"),
    ("sudo", "nopasswd; touch {marker}"),
    ("passwd", "passwd; touch {marker}"),
    ("passwd", "/usr/bin/passwd `touch {marker}`"),
])
def test_settings_outside_the_known_values_are_refused_before_connecting(
        sshd, device, target, admin, world_writable_dir, setting, value):
    marker = world_writable_dir / "pwned"  # the accounts could write it, were the command to run
    value = value.format(marker=marker)
    old = nasty_password(1)
    name = sshd.add_account(old)
    with Tap("127.0.0.1", sshd.port) as tap:
        ep = endpoint(device, tap.port, **{setting: value})
        self_service = target.apply(ep, [Change(name, nasty_password(2), old)], None, timeout=10)
        through_admin = target.apply(ep, [Change(name, "New-pass-1x")], admin, timeout=10)
        assert not marker.exists()  # nothing ran
        assert tap.connections == 0  # refused before connecting
    for [result] in (through_admin, self_service):
        assert isinstance(result.error, InvalidSetting)
        assert result.error.step == "validate" and result.error.device == device.name
        assert f"setting {setting} must be one of" in str(result.error)
    assert logs_in(sshd.port, name, old)


def test_known_alternative_paths_are_accepted(sshd, device, target, admin):
    old = nasty_password(2)
    name = sshd.add_account(old)
    new = nasty_password(3)
    [result] = target.apply(endpoint(device, sshd.port, chpasswd="/sbin/chpasswd", sudo="NOPASSWD"),
                            [Change(name, new)], admin, timeout=10)
    assert result.ok, result.error
    assert logs_in(sshd.port, name, new)
    newer = nasty_password(4)
    [result] = target.apply(endpoint(device, sshd.port, passwd="/usr/bin/passwd"),
                            [Change(name, newer, new)], None, timeout=10)
    assert result.ok, result.error
    assert logs_in(sshd.port, name, newer)
