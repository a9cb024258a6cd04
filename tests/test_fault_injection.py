"""Never lose a password: kill the executor after each step, lose the target mid-change,
lose the store at promotion — then recovery settles everything and every recorded secret
logs in on the real sshd. Plus bad data: each case ends in a clear error and a notification.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from pamflow.credentials import STEPS
from pamflow.models import Credential, Device, Operation, utcnow
from pamflow.operations import queue
from pamflow.operations.executor import drain, recover
from pamflow.platform import free_port
from pamflow.targets import register_target, reset_targets
from pamflow.targets.ssh import SSHTarget
from tests.peers.sshd import SSHD
from tests.test_rotation import (
    accounts,
    add_credential,
    assert_no_secret,
    logins,
    make_device,
    nasty,
    notifications_of,
    operations,
    recorded,
    secret_of,
    set_policy,
    stored_texts,
)

pytestmark = pytest.mark.usefixtures("needs_sshd")  # fails, never skips, without root/sshd
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(target_env):
    """Quiet events, a 10 s target timeout, fresh targets (tests.test_rotation)."""


def run_executor_subprocess(store, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAMFLOW_DATABASE_URL": str(store.url), "PAMFLOW_EMIT_EVENTS": "0",
           "PAMFLOW_LEASE_SECONDS": "60", **env_extra}
    return subprocess.run([sys.executable, "-m", "pamflow.operations.executor", "drain"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_after_each_step_then_recovery(store, sshd, step):
    set_policy(store)
    dev, acc = make_device(store, sshd)
    creds = accounts(store, sshd, dev, 2, step[:3])
    for cred, _pw in creds:
        queue.enqueue(store, "change", cred.id)

    proc = run_executor_subprocess(store, {"PAMFLOW_FAULT_AFTER_STEP": step})

    assert proc.returncode == -9, proc.stderr[-2000:]
    ops = operations(store)
    assert all(o.state == ("succeeded" if step == "promoted" else "running") for o in ops)
    assert all(o.step == step for o in ops)

    # the dead executor's leases run out; recovery settles without a human
    summary = recover(store, now=utcnow() + timedelta(minutes=5))

    assert summary.released_leases == (0 if step == "promoted" else 2)
    ops = operations(store)
    assert all(o.state == "succeeded" for o in ops), [(o.id, o.state, o.error) for o in ops]
    pairs, olds = [], []
    for cred, old in creds:
        rec = recorded(store, cred.id)
        assert rec.status == "ok" and rec.pending_secret is None
        new = secret_of(store, cred.id)
        assert new != old  # the change happened exactly once, and was kept
        pairs.append((cred.username, new))
        olds.append((cred.username, old))
    assert logins(sshd.port, pairs) == [True, True]
    assert logins(sshd.port, olds) == [False, False]
    assert_no_secret(stored_texts(store) + proc.stderr + proc.stdout,
                     [p for _u, p in pairs + olds] + [acc["admin"][1]])


def test_target_unreachable_between_apply_and_verify(store, sshd, caplog):
    set_policy(store)
    dev, acc = make_device(store, sshd)
    creds = accounts(store, sshd, dev, 2, "unr")
    closed = free_port()

    class VerifyOnClosedPort(SSHTarget):
        """Apply on the real sshd; verification then finds the host gone (a closed port)."""

        def verify(self, endpoint, login, timeout):
            return super().verify(dataclasses.replace(endpoint, port=closed), login, timeout)

    register_target("ssh", lambda engine: VerifyOnClosedPort(engine))
    for cred, _pw in creds:
        queue.enqueue(store, "change", cred.id)
    assert drain(store).failed == 2
    for cred, _pw in creds:
        rec = recorded(store, cred.id)
        assert rec.status == "unverified" and rec.pending_secret is not None
    for o in operations(store):
        assert o.step == "applied" and o.retryable
        assert "inconclusive" in o.error and "step verify" in o.error and dev.name in o.error
    assert len(notifications_of(store, "Error on change")) == 2

    # the host is back: reconciliation tries pending first and promotes it
    import pamflow.targets as targets

    targets._factories.clear()
    reset_targets()
    recover(store)
    pairs = []
    for cred, old in creds:
        rec = recorded(store, cred.id)
        assert rec.status == "ok" and rec.pending_secret is None and rec.secret_version == 1
        pairs.append((cred.username, secret_of(store, cred.id)))
        assert pairs[-1][1] != old
    assert logins(sshd.port, pairs) == [True, True]
    assert_no_secret(stored_texts(store) + caplog.text,
                     [p for _u, p in pairs] + [p for _c, p in creds] + [acc["admin"][1]])


def test_store_unavailable_at_promotion(store, sshd):
    set_policy(store)
    dev, _ = make_device(store, sshd)
    creds = accounts(store, sshd, dev, 2, "sto")
    for cred, _pw in creds:
        queue.enqueue(store, "change", cred.id)
    failed_once = []

    def refuse_promotion(session, _ctx, _instances):
        if failed_once:
            return
        if any(isinstance(o, Operation) and o.step == "promoted" for o in session.dirty):
            failed_once.append(True)
            raise sa.exc.OperationalError("COMMIT", {}, Exception("database is unavailable"))

    sa.event.listen(Session, "before_flush", refuse_promotion)
    try:
        drain(store)
    finally:
        sa.event.remove(Session, "before_flush", refuse_promotion)
    assert failed_once
    for cred, _pw in creds:
        rec = recorded(store, cred.id)  # applied and verified, but never promoted
        assert rec.pending_secret is not None and rec.secret_version == 0
    assert all(o.state == "failed" and o.step == "verified" for o in operations(store))

    recover(store)
    pairs = []
    for cred, old in creds:
        rec = recorded(store, cred.id)
        assert rec.status == "ok" and rec.pending_secret is None and rec.secret_version == 1
        pairs.append((cred.username, secret_of(store, cred.id)))
        assert pairs[-1][1] != old
    assert logins(sshd.port, pairs) == [True, True]


# ----------------------------------------------------------------------------- bad data
def test_unknown_device_or_credential_is_refused_at_enqueue(store):
    with pytest.raises(queue.QueueError, match="unknown device 9999"):
        queue.enqueue(store, "change", device_id=9999)
    with pytest.raises(queue.QueueError, match="unknown credential 4242"):
        queue.enqueue(store, "change", 4242)
    assert operations(store) == []


def test_device_without_credentials_and_unknown_platform(store, sshd):
    with Session(store, expire_on_commit=False) as db:
        empty = Device(name="empty-box", address="127.0.0.1", ports=[sshd.port])
        router = Device(name="router-1", address="127.0.0.2", platform="network")
        db.add_all([empty, router])
        db.commit()
    cred = add_credential(store, router, "admin", nasty("r"))
    on_empty = queue.enqueue(store, "change", device_id=empty.id).id
    on_router = queue.enqueue(store, "change", cred.id).id
    assert drain(store).failed == 2
    errors = {o.id: o.error for o in operations(store)}
    assert "device empty-box has no credentials" in errors[on_empty]
    assert "no password target for platform 'network'" in errors[on_router]
    assert "router-1" in errors[on_router] and "admin" in errors[on_router]
    assert len(notifications_of(store, "Error on change")) == 2


def test_wrong_admin_password(store, sshd):
    dev, acc = make_device(store, sshd)
    wrong = nasty("wrong")
    with Session(store) as db:
        admin = db.get(Credential, dev.admin_credential_id)
        from tests.test_rotation import seal

        admin.secret = seal(admin, wrong)
        db.add(admin)
        db.commit()
    pw = nasty("acct")
    cred = add_credential(store, dev, sshd.add_account(pw), pw)
    queue.enqueue(store, "change", cred.id)
    assert drain(store).failed == 1
    [op] = operations(store)
    assert dev.name in op.error and cred.username in op.error and "admin login" in op.error
    assert "refused" in op.error and not op.retryable
    rec = recorded(store, cred.id)
    assert rec.pending_secret is None and rec.status == "ok"  # known not applied
    assert logins(sshd.port, [(cred.username, pw)]) == [True]  # nothing lost
    [note] = notifications_of(store, "Error on change")
    assert cred.username in note.subject
    assert_no_secret(stored_texts(store), [wrong, pw, acc["admin"][1]])


@pytest.fixture
def own_sshd():
    server = SSHD.start()
    try:
        yield server
    finally:  # not stop(): it would remove the session sshd's sudoers rules
        server.proc.terminate()
        server.proc.wait(10)
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_host_key_changed(store, sshd, own_sshd):
    dev, _ = make_device(store, sshd, port=own_sshd.port)
    pw = nasty("hk")
    cred = add_credential(store, dev, sshd.add_account(pw), pw)
    queue.enqueue(store, "verify", cred.id)  # first contact records the host key
    assert drain(store).succeeded == 1
    own_sshd.restart_with_new_host_key()
    queue.enqueue(store, "change", cred.id)
    assert drain(store).failed == 1
    op = operations(store)[-1]
    assert "host key" in op.error and dev.name in op.error and cred.username in op.error
    assert recorded(store, cred.id).pending_secret is None
    assert logins(own_sshd.port, [(cred.username, pw)]) == [True]
    assert len(notifications_of(store, "Error on change")) == 1


def test_timeout_on_a_silent_host(store, sshd, monkeypatch):
    monkeypatch.setenv("PAMFLOW_TARGET_TIMEOUT", "1.5")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts TCP, never says a word
    try:
        dev, _ = make_device(store, sshd, port=silent.getsockname()[1])
        pw = nasty("to")
        cred = add_credential(store, dev, sshd.add_account(pw), pw)
        queue.enqueue(store, "change", cred.id)
        assert drain(store).failed == 1
    finally:
        silent.close()
    [op] = operations(store)
    # the silent host is named, with the step (the admin's connection) and the 1.5 s limit
    assert dev.name in op.error and cred.username in op.error
    assert "step admin login" in op.error and "timed out" in op.error and "within 1.5s" in op.error
    assert op.result == {"outcome_unknown": False, "failed_step": "admin login"}
    assert op.retryable and op.step == "pending_stored"  # the write-ahead was stored, then voided
    rec = recorded(store, cred.id)
    assert rec.pending_secret is None and rec.status == "ok"  # known not applied: nothing lost
    assert logins(sshd.port, [(cred.username, pw)]) == [True]
    assert len(notifications_of(store, "Error on change")) == 1
