"""The write-ahead rotation protocol against a real sshd with real Linux accounts.

Helpers here (``make_device``, ``add_credential``, ``ssh_login``, ``assert_no_secret``) are
reused by the other credential-operation tests.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import paramiko
import pytest
from sqlmodel import Session, select

from pamflow.models import (
    AuditLog,
    Credential,
    CredentialHistory,
    Device,
    Notification,
    Operation,
    SystemParameter,
)
from pamflow.operations import queue
from pamflow.operations.executor import drain, recover
from pamflow.targets import reset_targets
from pamflow.vault import credential_aad, vault

pytestmark = pytest.mark.usefixtures("needs_sshd")  # fails, never skips, without root/sshd

# only troublemakers (and a few letters): every one of them shows up in a few passwords
NASTY_CHARS = "'\"`\\ $%"
NASTY_POLICY = {"length": 32, "classes": [], "extra": NASTY_CHARS + "Ab1", "exclude": ""}


@pytest.fixture(autouse=True)
def _quiet_events(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    monkeypatch.setenv("PAMFLOW_TARGET_TIMEOUT", "10")
    reset_targets()
    yield
    reset_targets()


# ----------------------------------------------------------------------------- helpers
def nasty(tag: str = "") -> str:
    """A password with quotes, $, backticks, backslashes, spaces and %."""
    return f"a'b\"c`d\\e $HOME %s %n{tag}-{secrets.token_urlsafe(6)}"


def set_policy(engine, name: str = "nasty", policy: dict | None = None) -> str:
    with Session(engine) as db:
        db.merge(SystemParameter(key=f"password_policy.{name}",
                                 value=json.dumps(policy or NASTY_POLICY)))
        db.commit()
    return name


def make_device(engine, sshd, *, admin: bool = True, name: str | None = None, port: int | None = None,
                reconcile: bool = False, settings: dict | None = None) -> tuple[Device, dict]:
    """A linux device on the sshd with an admin (sudo chpasswd) credential; returns (device,
    {role: (username, password)})."""
    accounts = {}
    vault()  # opened before the session holds SQLite's write lock
    with Session(engine, expire_on_commit=False) as db:
        dev = Device(name=name or f"srv-{secrets.token_hex(3)}", address="127.0.0.1",
                     ports=[port or sshd.port], platform="linux", settings=settings or {})
        db.add(dev)
        db.commit()
        for role, wanted in (("admin", admin), ("reconcile", reconcile)):
            if not wanted:
                continue
            pw = nasty(role)
            user = sshd.add_account(pw, sudo_chpasswd=True)
            cred = Credential(device_id=dev.id, username=user, auto_change=False)
            db.add(cred)
            db.flush()
            cred.secret = seal(cred, pw)
            db.add(cred)
            db.commit()
            setattr(dev, f"{role}_credential_id", cred.id)
            accounts[role] = (user, pw)
        db.add(dev)
        db.commit()
        db.refresh(dev)
    return dev, accounts


def add_credential(engine, device: Device, username: str, password: str | None,
                   policy: str = "default", **kw) -> Credential:
    vault()  # opened before the session holds SQLite's write lock
    with Session(engine, expire_on_commit=False) as db:
        cred = Credential(device_id=device.id, username=username, policy=policy, **kw)
        db.add(cred)
        db.flush()
        cred.secret = seal(cred, password) if password else None
        db.add(cred)
        db.commit()
        db.refresh(cred)
        return cred


def seal(cred: Credential, secret: str, field: str = "secret") -> str:
    """``secret`` encrypted for ``cred``'s ``field`` (bound to its id and device)."""
    return vault().encrypt(secret, credential_aad(cred.id, cred.device_id, field))


def opened(cred: Credential, field: str = "secret") -> str:
    token = {"secret": cred.secret, "pending": cred.pending_secret,
             "candidate": cred.candidate_secret}[field]
    return vault().decrypt(token, credential_aad(cred.id, cred.device_id, field))


def ssh_login(port: int, username: str, password: str) -> bool:
    """An independent real login (paramiko, not the target under test)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        try:
            transport.auth_password(username, password)
        except paramiko.AuthenticationException:
            return False
        return transport.is_authenticated()
    finally:
        transport.close()


def accounts(store, sshd, dev, n: int, tag: str, policy: str = "nasty"
             ) -> list[tuple[Credential, str]]:
    """``n`` real accounts on the sshd with nasty passwords, each a credential of ``dev``."""
    out = []
    for i in range(n):
        pw = nasty(f"{tag}{i}")
        out.append((add_credential(store, dev, sshd.add_account(pw), pw, policy=policy), pw))
    return out


def logins(port: int, pairs: list[tuple[str, str]]) -> list[bool]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda p: ssh_login(port, *p), pairs))


def recorded(engine, cred_id: int) -> Credential:
    with Session(engine, expire_on_commit=False) as db:
        return db.get(Credential, cred_id)


def secret_of(engine, cred_id: int) -> str:
    return opened(recorded(engine, cred_id))


def stored_texts(engine) -> str:
    """Everything a human or a robot reads: operations, notifications, audit, statuses."""
    with Session(engine) as db:
        parts = [json.dumps([o.error, o.result, o.reason, o.parameters, o.step], default=str)
                 for o in db.exec(select(Operation))]
        parts += [json.dumps([n.subject, n.body, n.context], default=str)
                  for n in db.exec(select(Notification))]
        parts += [json.dumps([a.action, a.detail], default=str) for a in db.exec(select(AuditLog))]
        parts += [str(c.status_detail) for c in db.exec(select(Credential))]
    return "\n".join(parts)


def assert_no_secret(texts: str, secret_values) -> None:
    for s in secret_values:
        assert s and s not in texts, "a secret leaked"


def notifications_of(engine, type_name: str) -> list[Notification]:
    with Session(engine) as db:
        return list(db.exec(select(Notification).where(Notification.type == type_name)))


def operations(engine) -> list[Operation]:
    with Session(engine) as db:
        return list(db.exec(select(Operation).order_by(Operation.id)))


# ----------------------------------------------------------------------------- tests
def test_change_rotates_real_accounts_with_nasty_passwords(store, sshd, caplog):
    caplog.set_level(logging.DEBUG)
    policy = set_policy(store)
    dev, acc = make_device(store, sshd)
    olds = {}
    creds = []
    for i in range(4):
        pw = nasty(str(i))
        user = sshd.add_account(pw)
        cred = add_credential(store, dev, user, pw, policy=policy, change_interval_days=30)
        creds.append(cred)
        olds[cred.id] = (user, pw)
        queue.enqueue(store, "change", cred.id, requested_by="alice")

    summary = drain(store, batch_size=10)

    assert summary.succeeded == 4 and summary.failed == 0 and summary.batches == 1
    news = {c.id: secret_of(store, c.id) for c in creds}
    assert set(NASTY_CHARS) <= set("".join(news.values()))  # every troublemaker was used
    for cred_id, new in news.items():
        assert new != olds[cred_id][1]
        rec = recorded(store, cred_id)
        assert rec.status == "ok" and rec.pending_secret is None and rec.secret_version == 1
        assert rec.expires_at is not None and rec.last_changed_at is not None
    # log in with the new password, fail with the old one: for real, on the sshd
    users = [olds[c.id][0] for c in creds]
    assert logins(sshd.port, [(u, news[c.id]) for u, c in zip(users, creds, strict=True)]) == [True] * 4
    assert logins(sshd.port, [(u, olds[c.id][1]) for u, c in zip(users, creds, strict=True)]) == [False] * 4
    with Session(store) as db:
        hist = db.exec(select(CredentialHistory)).all()
        assert {vault().decrypt(h.secret, credential_aad(h.credential_id, dev.id, "history"))
            for h in hist} == {pw for _u, pw in olds.values()}
    ops = operations(store)
    assert all(o.state == "succeeded" and o.step == "promoted" and o.attempts == 1 for o in ops)
    assert len(notifications_of(store, "Change Executed")) == 4
    assert len(notifications_of(store, "Password changed")) == 4
    with Session(store) as db:
        actions = [a.action for a in db.exec(select(AuditLog))]
    assert actions.count("credential.change") == 4
    every_secret = list(news.values()) + [pw for _u, pw in olds.values()] + [acc["admin"][1]]
    assert_no_secret(stored_texts(store) + caplog.text, every_secret)


def test_self_service_change_without_admin(store, sshd):
    dev, _ = make_device(store, sshd, admin=False)
    pw = nasty("self")
    user = sshd.add_account(pw)
    cred = add_credential(store, dev, user, pw, policy=set_policy(store))
    queue.enqueue(store, "change", cred.id)
    assert drain(store).succeeded == 1
    new = secret_of(store, cred.id)
    assert logins(sshd.port, [(user, new), (user, pw)]) == [True, False]


def test_verify_confirms_and_flags_invalid(store, sshd):
    dev, _ = make_device(store, sshd)
    good_pw, bad_pw = nasty("g"), nasty("b")
    good = add_credential(store, dev, sshd.add_account(good_pw), good_pw)
    bad = add_credential(store, dev, sshd.add_account(nasty("real")), bad_pw)
    queue.enqueue(store, "verify", good.id)
    queue.enqueue(store, "verify", bad.id)
    drain(store)
    assert recorded(store, good.id).status == "ok"
    assert recorded(store, good.id).last_verified_at is not None
    assert recorded(store, bad.id).status == "invalid"
    confirmed = notifications_of(store, "Password confirmed")
    assert len(confirmed) == 1 and good.username in confirmed[0].body
    invalid = notifications_of(store, "Invalid password")
    assert len(invalid) == 1 and bad.username in invalid[0].subject
    assert_no_secret(stored_texts(store), [good_pw, bad_pw])


def test_reconcile_tries_pending_then_current_then_reconcile_account(store, sshd):
    dev, acc = make_device(store, sshd, reconcile=True)
    v = vault()
    # 1: the target has the pending secret (a change applied, never promoted)
    old1, new1 = nasty("o1"), nasty("n1")
    u1 = sshd.add_account(new1)
    c1 = add_credential(store, dev, u1, old1, status="unverified")
    # 2: the target still has the current one (the change never reached it)
    old2, new2 = nasty("o2"), nasty("n2")
    u2 = sshd.add_account(old2)
    c2 = add_credential(store, dev, u2, old2, status="unverified")
    # 3: neither: the reconcile account puts the recorded (pending) secret back
    old3, new3 = nasty("o3"), nasty("n3")
    u3 = sshd.add_account(nasty("somebody-else-changed-it"))
    c3 = add_credential(store, dev, u3, old3, status="unverified")
    with Session(store) as db:
        for cid, pending in ((c1.id, new1), (c2.id, new2), (c3.id, new3)):
            cred = db.get(Credential, cid)
            cred.pending_secret = v.encrypt(pending, credential_aad(cred.id, cred.device_id,
                                                                    "pending"))
            db.add(cred)
        db.commit()

    summary = recover(store)

    assert summary.reconcile_queued == 3
    assert (secret_of(store, c1.id), secret_of(store, c2.id), secret_of(store, c3.id)) == \
        (new1, old2, new3)
    for cid in (c1.id, c2.id, c3.id):
        rec = recorded(store, cid)
        assert rec.status == "ok" and rec.pending_secret is None
    assert logins(sshd.port, [(u1, new1), (u2, old2), (u3, new3)]) == [True, True, True]
    with Session(store) as db:
        details = {a.detail["credential_id"]: a.detail["true_secret"]
                   for a in db.exec(select(AuditLog).where(AuditLog.action == "credential.reconciled"))}
    assert details == {c1.id: "pending", c2.id: "current", c3.id: "reconcile"}
    assert_no_secret(stored_texts(store), [old1, new1, old2, new2, old3, new3, acc["admin"][1]])


def test_reconcile_without_a_working_secret_marks_invalid(store, sshd):
    dev, _ = make_device(store, sshd)
    u = sshd.add_account(nasty("unknown"))
    cred = add_credential(store, dev, u, nasty("recorded"), status="unverified")
    recover(store)
    rec = recorded(store, cred.id)
    assert rec.status == "invalid" and "no reconcile account" in rec.status_detail
    assert len(notifications_of(store, "Invalid password")) == 1
    # invalid credentials are not reconciled again and again
    assert recover(store).reconcile_queued == 0


def test_activate_puts_recorded_password_on_target(store, sshd):
    dev, _ = make_device(store, sshd)
    recorded_pw = nasty("act")
    u = sshd.add_account(nasty("before"))
    cred = add_credential(store, dev, u, recorded_pw)
    queue.enqueue(store, "activate", cred.id)
    assert drain(store).succeeded == 1
    assert logins(sshd.port, [(u, recorded_pw)]) == [True]
    assert len(notifications_of(store, "Activation executed")) == 1


def test_activate_error_is_notified(store, sshd):
    dev, _ = make_device(store, sshd)
    cred = add_credential(store, dev, "pft-no-such-user", nasty("x"))
    queue.enqueue(store, "activate", cred.id)
    assert drain(store).failed == 1
    [op] = operations(store)
    assert "pft-no-such-user" in op.error and dev.name in op.error
    assert len(notifications_of(store, "Error on activation")) == 1
    rec = recorded(store, cred.id)
    assert rec.pending_secret is None  # chpasswd refused: known not applied


def test_concurrent_drains_in_one_process_run_each_once(store, sshd):
    dev, _ = make_device(store, sshd)
    creds = []
    for i in range(12):
        pw = nasty(str(i))
        creds.append((add_credential(store, dev, sshd.add_account(pw), pw), pw))
        queue.enqueue(store, "change", creds[-1][0].id)
    results = []
    threads = [threading.Thread(target=lambda: results.append(drain(store, batch_size=3)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.succeeded for r in results) == 12
    assert all(o.attempts == 1 and o.state == "succeeded" for o in operations(store))
    pairs = [(c.username, secret_of(store, c.id)) for c, _ in creds]
    assert logins(sshd.port, pairs) == [True] * 12
