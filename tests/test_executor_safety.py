"""The executor never loses or double-rotates a password, on the real sshd:

- a stalled executor whose operation was re-claimed writes nothing and touches no target
  (lease fencing);
- the Retry robot does not repeat a change that reconciliation already settled, nor retry
  while the credential is being settled;
- a change that cannot even start is notified once and not queued again every minute;
- SIGTERM stops the executor service and its Prefect flow gracefully: nothing left
  running, what was not started goes back to the queue;
- a password changed outside pamflow (``invalid``) is set back through the reconcile account;
- a kill after the target took the change, and a connection cut while chpasswd runs, are
  settled by recovery.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pamflow import faults
from pamflow.credentials import queue_due_changes
from pamflow.models import Credential, CredentialHistory, Device, Operation, utcnow
from pamflow.operations import queue
from pamflow.operations.executor import drain, recover
from pamflow.platform import free_port
from pamflow.targets import register_target, reset_targets
from pamflow.targets.ssh import SSHTarget
from pamflow.vault import Keyring, Vault, credential_aad, vault
from tests.peers.proxy import CuttableProxy
from tests.test_rotation import (
    accounts,
    add_credential,
    logins,
    make_device,
    nasty,
    notifications_of,
    operations,
    recorded,
    seal,
    secret_of,
    set_policy,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(target_env, sshd):
    """Quiet events, a 10 s target timeout, fresh targets (tests.test_rotation)."""


def stored_pairs(store, creds) -> list[tuple[str, str]]:
    return [(c.username, secret_of(store, c.id)) for c, _pw in creds]


def executor_env(store, **extra: str) -> dict:
    return {**os.environ, "PAMFLOW_DATABASE_URL": str(store.url), "PAMFLOW_EMIT_EVENTS": "0",
            "PAMFLOW_TARGET_TIMEOUT": "10", **extra}


def process_state(pid: int) -> str:
    """The one-letter state of a process (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(check, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- fencing
@pytest.mark.parametrize("stall_after", ["claimed", "pending_stored"])
def test_a_stalled_executor_whose_lease_was_taken_writes_and_applies_nothing(store, sshd,
                                                                              stall_after):
    set_policy(store)
    dev, _ = make_device(store, sshd)
    creds = accounts(store, sshd, dev, 2, f"st{stall_after[:2]}")
    for cred, _pw in creds:
        queue.enqueue(store, "change", cred.id)
    stalled = subprocess.Popen(
        [sys.executable, "-m", "pamflow.operations.executor", "drain"], cwd=ROOT,
        env=executor_env(store, PAMFLOW_FAULT_AFTER_STEP=stall_after, PAMFLOW_FAULT_ACTION="stop",
                         PAMFLOW_LEASE_SECONDS="3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: process_state(stalled.pid) == "T", "the executor to stall")
        # its lease runs out while it is frozen; a second executor takes the work over
        wait_for(lambda: all(o.lease_expires_at and o.lease_expires_at < utcnow()
                             for o in operations(store)), "the stalled lease to expire")
        summary = drain(store)
        assert summary.succeeded == 2
        after_takeover = stored_pairs(store, creds)
        assert logins(sshd.port, after_takeover) == [True, True]
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    out, err = stalled.communicate(timeout=120)
    assert stalled.returncode == 0, err[-3000:]

    # the stalled executor woke up and did nothing: the password is the one the store holds
    assert stored_pairs(store, creds) == after_takeover
    assert logins(sshd.port, after_takeover) == [True, True]
    for cred, _old in creds:
        rec = recorded(store, cred.id)
        assert rec.status == "ok" and rec.pending_secret is None
        assert rec.secret_version == 1, "the password was changed twice"
    assert logins(sshd.port, [(c.username, pw) for c, pw in creds]) == [False, False]
    assert [o.state for o in operations(store)] == ["succeeded", "succeeded"]
    assert "lease lost" in err or "lease too short or lost" in err
    assert json.loads(out.strip().splitlines()[-1])["succeeded"] == 0


def test_an_unconfirmed_pending_secret_is_kept_and_found_again(store, sshd):
    """Reconciliation sets aside a pending secret that does not log in; if that secret
    turns up on the target later (applied on a lost lease), reconciliation finds it."""
    set_policy(store)
    dev, _ = make_device(store, sshd)
    [(cred, old)] = accounts(store, sshd, dev, 1, "unc")
    late = nasty("late")
    with Session(store) as db:  # a write-ahead whose apply had not happened yet
        row = db.get(Credential, cred.id)
        row.pending_secret, row.pending_operation_id = seal(row, late, "pending"), 999
        row.status = "unverified"
        db.add(row)
        db.commit()
    recover(store)
    rec = recorded(store, cred.id)
    assert rec.status == "ok" and rec.pending_secret is None and secret_of(store, cred.id) == old
    with Session(store) as db:
        [kept] = db.exec(select(CredentialHistory).where(
            CredentialHistory.credential_id == cred.id)).all()
    assert kept.reason == "unconfirmed pending of operation 999"
    assert vault().decrypt(kept.secret, credential_aad(cred.id, dev.id, "history")) == late

    # the late apply lands on the target after all
    subprocess.run(["chpasswd"], input=f"{cred.username}:{late}\n", text=True, check=True)
    queue.enqueue(store, "verify", cred.id)
    drain(store)
    assert recorded(store, cred.id).status == "invalid"
    recover(store)  # no reconcile account: reconciliation only looks for a known secret
    assert recorded(store, cred.id).status == "invalid"
    queue.enqueue(store, "reconcile", cred.id)
    drain(store)
    rec = recorded(store, cred.id)
    assert rec.status == "ok" and secret_of(store, cred.id) == late
    assert logins(sshd.port, [(cred.username, secret_of(store, cred.id))]) == [True]


# ----------------------------------------------------------------------------- retry
def test_retry_does_not_repeat_a_change_that_reconciliation_settled(store, sshd):
    set_policy(store)
    dev, _ = make_device(store, sshd)
    [(cred, old)] = accounts(store, sshd, dev, 1, "rty")
    closed = free_port()

    class VerifyOnClosedPort(SSHTarget):
        """Apply on the real sshd; verification then finds the host gone."""

        def verify(self, endpoint, login, timeout):
            return super().verify(dataclasses.replace(endpoint, port=closed), login, timeout)

    register_target("ssh", lambda engine: VerifyOnClosedPort(engine))
    change = queue.enqueue(store, "change", cred.id).id
    assert drain(store).failed == 1
    op = [o for o in operations(store) if o.id == change][0]
    assert op.retryable and op.result["outcome_unknown"]

    import pamflow.targets as targets

    targets._factories.clear()
    reset_targets()
    recover(store)  # the password-reconciliation robot: pending logs in, promoted
    holder_password = secret_of(store, cred.id)
    assert recorded(store, cred.id).secret_version == 1

    assert queue.retry_failed(store, now=utcnow() + timedelta(days=1)) == []
    op = [o for o in operations(store) if o.id == change][0]
    assert op.state == "succeeded" and not op.retryable
    assert op.result["settled_by_operation"] != change
    assert drain(store).claimed == 0
    assert secret_of(store, cred.id) == holder_password
    assert recorded(store, cred.id).secret_version == 1
    assert logins(sshd.port, [(cred.username, holder_password)]) == [True]


def test_retry_waits_while_the_credential_is_being_settled(store):
    with Session(store, expire_on_commit=False) as db:
        dev = Device(name="r1", address="10.2.0.1")
        db.add(dev)
        db.commit()
    cred = add_credential(store, dev, "u1", "pw-1")
    failed = queue.enqueue(store, "change", cred.id).id
    [claimed] = queue.claim(store, "exec-a", 1)
    with Session(store) as db:
        queue.mark_failed(db, db.get(Operation, claimed.id), "target dropped", retryable=True)
        db.commit()
    reconcile = queue.enqueue(store, "reconcile", cred.id).id
    later = utcnow() + timedelta(days=1)

    assert queue.retry_failed(store, now=later) == []  # a reconcile is queued: wait
    assert queue.cancel(store, reconcile)
    with Session(store) as db:  # an unverified credential waits for reconciliation too
        row = db.get(Credential, cred.id)
        row.status = "unverified"
        db.add(row)
        db.commit()
    assert queue.retry_failed(store, now=later) == []
    with Session(store) as db:
        row = db.get(Credential, cred.id)
        row.status = "ok"
        db.add(row)
        db.commit()
    assert queue.retry_failed(store, now=later) == [failed]


# ----------------------------------------------------------------------------- attention
def test_a_change_that_cannot_start_is_notified_once_and_not_requeued(store):
    other_key = Vault(Keyring.from_env_value(base64.b64encode(secrets.token_bytes(32)).decode()))
    with Session(store, expire_on_commit=False) as db:
        dev = Device(name="locked-box", address="10.3.0.1")
        db.add(dev)
        db.commit()
        cred = Credential(device_id=dev.id, username="svc", expires_at=utcnow() - timedelta(days=1))
        db.add(cred)
        db.commit()
        cred.secret = other_key.encrypt("unreadable", credential_aad(cred.id, dev.id, "secret"))
        db.add(cred)
        db.commit()
    for minute in range(3):  # the expired-password robot runs every minute
        queue_due_changes(store, now=utcnow() + timedelta(minutes=minute))
        drain(store)
    ops = operations(store)
    assert len(ops) == 1 and ops[0].state == "failed" and not ops[0].retryable
    assert "locked-box" in ops[0].error and "svc" in ops[0].error and "step load" in ops[0].error
    assert len(notifications_of(store, "Error on change")) == 1
    rec = recorded(store, cred.id)
    assert rec.attention and rec.attention_at is not None
    assert queue.retry_failed(store, now=utcnow() + timedelta(days=1)) == []

    # someone stores a readable secret: the robot tries again (and says so again if it fails)
    with Session(store) as db:
        row = db.get(Credential, cred.id)
        row.secret = seal(row, "readable-now")
        row.updated_at = utcnow()
        db.add(row)
        db.commit()
    assert [q.credential_id for q in queue_due_changes(store)] == [cred.id]


# ----------------------------------------------------------------------------- graceful stop
def _many_changes(store, sshd, n: int, tag: str):
    set_policy(store)
    dev, _ = make_device(store, sshd)
    creds = accounts(store, sshd, dev, n, tag)
    for cred, _pw in creds:
        queue.enqueue(store, "change", cred.id)
    return creds


def _assert_stopped_cleanly(store, sshd, creds):
    ops = operations(store)
    assert not [o for o in ops if o.state == "running"], "work left running under a dead lease"
    done = [o for o in ops if o.state == "succeeded"]
    given_back = [o for o in ops if o.state == "queued"]
    assert done and given_back, [o.state for o in ops]
    assert all(o.attempts == 0 and o.lease_owner is None for o in given_back)
    for cred, _pw in creds:
        assert recorded(store, cred.id).pending_secret is None
    assert all(logins(sshd.port, stored_pairs(store, creds)))
    # another executor finishes the rest
    assert drain(store).succeeded == len(given_back)
    assert all(logins(sshd.port, stored_pairs(store, creds)))


def test_sigterm_stops_the_executor_service_and_gives_back_what_it_has_not_started(store, sshd):
    creds = _many_changes(store, sshd, 24, "sv")
    proc = subprocess.Popen([sys.executable, "-m", "pamflow.operations.executor", "serve", "300"], cwd=ROOT,
                            env=executor_env(store, PAMFLOW_BATCH_SIZE="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(o.state == "succeeded" for o in operations(store)), "a first change")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["stopped"] is True
    _assert_stopped_cleanly(store, sshd, creds)


def test_sigterm_stops_the_operation_executor_flow_run_gracefully(store, sshd, prefect_server,
                                                                  prefect_client_sync):
    creds = _many_changes(store, sshd, 24, "fl")
    script = ("import json; from flows.operations import operation_executor; "
              "print(json.dumps(operation_executor(lifetime_s=300, poll_s=0.2, batch_size=2)))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            env=executor_env(store, PREFECT_API_URL=prefect_server),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(o.state == "succeeded" for o in operations(store)), "a first change",
             timeout=120)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped"] is True and summary["succeeded"] >= 1
    _assert_stopped_cleanly(store, sshd, creds)
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = prefect_client_sync.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["operation-executor"])))
    assert runs and runs[0].state.is_completed()


# ----------------------------------------------------------------------------- invalid
def test_a_password_changed_outside_is_set_back_through_the_reconcile_account(store, sshd):
    dev, acc = make_device(store, sshd, reconcile=True)
    [(cred, recorded_pw)] = accounts(store, sshd, dev, 1, "inv")
    subprocess.run(["chpasswd"], input=f"{cred.username}:{nasty('outside')}\n", text=True,
                   check=True)
    queue.enqueue(store, "verify", cred.id)  # the password-check robot
    drain(store)
    assert recorded(store, cred.id).status == "invalid"
    assert len(notifications_of(store, "Invalid password")) == 1

    summary = recover(store)  # the password-reconciliation robot
    assert summary.credentials == [cred.id]
    rec = recorded(store, cred.id)
    assert rec.status == "ok" and "reconcile account" in rec.status_detail
    assert logins(sshd.port, [(cred.username, recorded_pw)]) == [True]
    assert notifications_of(store, "Password changed")


def test_a_failed_reconcile_of_an_invalid_password_does_not_loop(store, sshd):
    dev, acc = make_device(store, sshd, reconcile=True)
    with Session(store) as db:  # the reconcile account's own password is wrong
        rec_cred = db.get(Credential, dev.reconcile_credential_id)
        rec_cred.secret = seal(rec_cred, nasty("wrong"))
        db.add(rec_cred)
        db.commit()
    [(cred, _pw)] = accounts(store, sshd, dev, 1, "inl")
    subprocess.run(["chpasswd"], input=f"{cred.username}:{nasty('outside')}\n", text=True,
                   check=True)
    with Session(store) as db:
        row = db.get(Credential, cred.id)
        row.status = "invalid"
        db.add(row)
        db.commit()
    first = recover(store)
    assert first.credentials == [cred.id]
    rec = recorded(store, cred.id)
    assert rec.status == "invalid" and rec.attention
    assert recover(store).credentials == []  # not again every ten minutes


# ----------------------------------------------------------------------------- inside the change
def test_sigkill_after_the_target_took_the_change_before_it_was_recorded(store, sshd):
    set_policy(store)
    dev, _ = make_device(store, sshd)
    creds = accounts(store, sshd, dev, 3, "ta")
    for cred, _pw in creds:
        queue.enqueue(store, "change", cred.id)
    proc = subprocess.run([sys.executable, "-m", "pamflow.operations.executor", "drain"], cwd=ROOT,
                          env=executor_env(store, PAMFLOW_FAULT_AFTER_STEP="target_applied",
                                           PAMFLOW_LEASE_SECONDS="60"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    for cred, _pw in creds:  # the target has the new password; the store only as pending
        rec = recorded(store, cred.id)
        assert rec.pending_secret is not None and rec.status == "ok" and rec.secret_version == 0
    assert all(o.step == "pending_stored" and o.state == "running" for o in operations(store))

    recover(store, now=utcnow() + timedelta(minutes=5))
    for cred, old in creds:
        rec = recorded(store, cred.id)
        assert rec.status == "ok" and rec.pending_secret is None and rec.secret_version == 1
        assert secret_of(store, cred.id) != old
    assert logins(sshd.port, stored_pairs(store, creds)) == [True] * 3


def test_connection_cut_while_chpasswd_runs(store, sshd):
    set_policy(store)
    proxy = CuttableProxy(sshd.port)
    try:
        dev, acc = make_device(store, sshd, port=proxy.port)
        creds = accounts(store, sshd, dev, 6, "cut")
        for cred, _pw in creds:
            queue.enqueue(store, "change", cred.id)
        faults.on("chpasswd_sent", proxy.cut)
        try:
            summary = drain(store)
        finally:
            faults.on("chpasswd_sent", None)
        assert proxy.cuts == 1 and summary.failed == 6
        for o in operations(store):
            assert o.retryable and o.result["outcome_unknown"], o.error
            assert "outcome is unknown" in o.error and "step chpasswd" in o.error
        for cred, _pw in creds:
            rec = recorded(store, cred.id)
            assert rec.status == "unverified" and rec.pending_secret is not None
        # whatever the target got, it finishes on its own: let it, then settle
        wait_for(lambda: subprocess.run(["pgrep", "-x", "chpasswd"]).returncode == 1,
                 "the target's chpasswd to end")

        recover(store)
        for cred, _pw in creds:
            rec = recorded(store, cred.id)
            assert rec.status == "ok" and rec.pending_secret is None
        assert logins(sshd.port, stored_pairs(store, creds)) == [True] * 6
    finally:
        proxy.close()


def test_chpasswd_input_cut_short_changes_nothing(store, sshd):
    """What the target runs refuses input whose end marker is missing, so a last line cut
    short in transit can never become a password."""
    import paramiko

    from pamflow.targets.base import Endpoint
    from pamflow.targets.ssh import INPUT_CUT_STATUS, MemoryHostKeys

    admin_pw = nasty("adm")
    admin = sshd.add_account(admin_pw, sudo_chpasswd=True)
    victim_pw = nasty("victim")
    victim = sshd.add_account(victim_pw)
    endpoint = Endpoint(1, "cut-box", "127.0.0.1", sshd.port, {})
    _mode, command = SSHTarget(host_keys=MemoryHostKeys())._chpasswd_command(
        endpoint, "PAMFLOW-END-0123456789abcdef")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - test peer
    client.connect("127.0.0.1", sshd.port, admin, admin_pw, look_for_keys=False,
                   allow_agent=False)
    try:
        stdin, stdout, stderr = client.exec_command(command)
        stdin.write(f"{victim}:the-new-pass")  # cut: no newline, no end marker
        stdin.channel.shutdown_write()
        assert stdout.channel.recv_exit_status() == INPUT_CUT_STATUS
        assert "incomplete" in stderr.read().decode()
    finally:
        client.close()
    assert logins(sshd.port, [(victim, victim_pw), (victim, "the-new-pass")]) == [True, False]
