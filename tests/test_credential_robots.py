"""The credential robots: what they queue (domain), and the flows on a real Prefect server
rotating real accounts on the real sshd; plus the ``pamflow operations`` CLI."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.credentials import (
    process_reservations,
    queue_change_reminders,
    queue_due_changes,
    queue_password_checks,
)
from pamflow.models import (
    Credential,
    Device,
    Notification,
    Operation,
    PasswordReservation,
    utcnow,
)
from pamflow.operations import queue
from pamflow.targets import reset_targets
from tests.test_rotation import (
    add_credential,
    logins,
    make_device,
    nasty,
    notifications_of,
    operations,
    secret_of,
)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    reset_targets()
    yield
    reset_targets()


def device(engine, name="box", **kw) -> Device:
    with Session(engine, expire_on_commit=False) as db:
        dev = Device(name=name, address=f"10.1.0.{abs(hash(name)) % 250 + 1}", **kw)
        db.add(dev)
        db.commit()
        return dev


def cred(engine, dev, user, **kw) -> Credential:
    return add_credential(engine, dev, user, "x-" + user, **kw)


def queued_ops(engine, kind):
    with Session(engine) as db:
        return list(db.exec(select(Operation).where(Operation.kind == kind,
                                                    Operation.state == "queued")))


# ----------------------------------------------------------------------------- domain
def test_due_changes_expired_interval_and_exclusions(store):
    now = utcnow()
    dev = device(store)
    maint = device(store, "maint", maintenance_mode=True)
    expired = cred(store, dev, "expired", expires_at=now - timedelta(minutes=1))
    by_interval = cred(store, dev, "interval", change_interval_days=30,
                       last_changed_at=now - timedelta(days=31))
    not_yet = cred(store, dev, "fresh", change_interval_days=30,
                   last_changed_at=now - timedelta(days=3))
    manual = cred(store, dev, "manual", auto_change=False, expires_at=now - timedelta(days=1))
    in_maintenance = cred(store, maint, "maint", expires_at=now - timedelta(days=1))
    reserved = cred(store, dev, "reserved", expires_at=now - timedelta(days=1))
    unverified = cred(store, dev, "unverified", expires_at=now - timedelta(days=1),
                      status="unverified")
    with Session(store) as db:
        db.add(PasswordReservation(credential_id=reserved.id, requested_by="bob", state="active",
                                   starts_at=now - timedelta(hours=1),
                                   ends_at=now + timedelta(hours=1)))
        db.commit()

    first = queue_due_changes(store, now=now)
    again = queue_due_changes(store, now=now)  # already queued: not twice

    assert {q.credential_id for q in first} == {expired.id, by_interval.id}
    assert again == []
    assert {o.credential_id for o in queued_ops(store, "change")} == {expired.id, by_interval.id}
    with Session(store) as db:
        assert db.get(Credential, expired.id).status == "expired"
        for c in (not_yet, manual, in_maintenance, reserved, unverified):
            assert db.get(Credential, c.id).status != "expired"


def test_password_checks_queue_stale_ones_once(store):
    now = utcnow()
    dev = device(store)
    stale = cred(store, dev, "stale", last_verified_at=now - timedelta(days=2))
    never = cred(store, dev, "never")
    recent = cred(store, dev, "recent", last_verified_at=now - timedelta(hours=1))
    queued = queue_password_checks(store, max_age=timedelta(hours=24), now=now)
    assert {q.credential_id for q in queued} == {stale.id, never.id}
    assert recent.id not in {o.credential_id for o in queued_ops(store, "verify")}
    assert queue_password_checks(store, max_age=timedelta(hours=24), now=now) == []


def test_change_reminder_once_per_cycle(store):
    now = utcnow()
    dev = device(store)
    soon = cred(store, dev, "soon", expires_at=now + timedelta(days=3))
    cred(store, dev, "later", expires_at=now + timedelta(days=30))
    cred(store, dev, "none")
    sent = queue_change_reminders(store, days_before=7, now=now)
    assert [s.credential_id for s in sent] == [soon.id]
    assert queue_change_reminders(store, days_before=7, now=now + timedelta(hours=1)) == []
    [note] = notifications_of(store, "Password change reminder")
    assert "soon" in note.subject and "box" in note.subject
    # a new cycle (the password was changed: promotion clears reminder_sent_at)
    with Session(store) as db:
        c = db.get(Credential, soon.id)
        c.reminder_sent_at = None
        c.expires_at = now + timedelta(days=5)
        db.add(c)
        db.commit()
    assert len(queue_change_reminders(store, days_before=7, now=now)) == 1


def test_reservations_start_and_end_queue_changes(store):
    now = utcnow()
    dev = device(store)
    c = cred(store, dev, "shared")
    with Session(store, expire_on_commit=False) as db:
        res = PasswordReservation(credential_id=c.id, requested_by="carol",
                                  starts_at=now + timedelta(minutes=10),
                                  ends_at=now + timedelta(hours=2))
        db.add(res)
        db.commit()
    assert process_reservations(store, now=now) == []
    started = process_reservations(store, now=now + timedelta(minutes=11))
    assert [(e.phase, e.change_queued) for e in started] == [("start", True)]
    [op] = queued_ops(store, "change")
    assert op.requested_by == "carol" and op.parameters == {"reservation_id": res.id,
                                                            "phase": "start"}
    queue.cancel(store, op.id)
    ended = process_reservations(store, now=now + timedelta(hours=3))
    assert [e.phase for e in ended] == ["end"]
    with Session(store) as db:
        assert db.get(PasswordReservation, res.id).state == "finished"
    assert len(queued_ops(store, "change")) == 1
    assert len(notifications_of(store, "Password reservation")) == 2


# ----------------------------------------------------------------------------- CLI
def test_cli_queue_list_show_cancel_recover(store):
    dev = device(store)
    c = cred(store, dev, "cli")
    runner = CliRunner()
    out = runner.invoke(app, ["operations", "queue", "verify", str(c.id), "--delay", "3600"])
    assert out.exit_code == 0, out.output
    op_id = int(out.output.split()[-1])
    again = runner.invoke(app, ["operations", "queue", "verify", str(c.id)])
    assert f"joined the queued operation {op_id}" in again.output
    bad = runner.invoke(app, ["operations", "queue", "change", "999"])
    assert bad.exit_code == 2 and "unknown credential 999" in bad.output
    listed = runner.invoke(app, ["operations", "list", "--json"])
    assert json.loads(listed.output.splitlines()[0])["id"] == op_id
    shown = runner.invoke(app, ["operations", "show", str(op_id)])
    assert json.loads(shown.output)["state"] == "queued"
    assert runner.invoke(app, ["operations", "cancel", str(op_id)]).exit_code == 0
    assert runner.invoke(app, ["operations", "cancel", str(op_id)]).exit_code == 1
    rec = runner.invoke(app, ["operations", "recover", "--no-run"])
    assert rec.exit_code == 0 and json.loads(rec.output)["reconcile_queued"] == 0


# ----------------------------------------------------------------------------- flows
def test_enqueue_emits_pam_operation_queued_to_prefect(store, prefect_server, monkeypatch):
    import time

    import httpx
    from prefect.events.worker import EventsWorker

    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "1")
    c = cred(store, device(store), "evented")
    first = queue.enqueue(store, "change", c.id, requested_by="alice")
    assert queue.enqueue(store, "change", c.id).coalesced  # joins: no second event
    EventsWorker.drain_all(timeout=10)
    resource = f"pam.operation.{first.id}"
    found = []
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        page = httpx.post(f"{prefect_server}/events/filter", json={
            "filter": {"event": {"name": ["pam.operation.queued"]},
                       "resource": {"id": [resource]}}, "limit": 50}, timeout=10).json()
        found = page["events"]
        if not found:
            time.sleep(0.5)
    assert len(found) == 1, "the event never reached the Prefect server"
    assert found[0]["payload"] == {"operation_ids": [first.id], "count": 1,
                                   "requested_by": "alice"}
    assert "x-evented" not in json.dumps(found[0])  # ids only, never the secret


def _artifacts(client, keys: list[str]) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return "\n".join(json.dumps([a.key, a.data, a.description], default=str) for a in arts)


def test_robots_rotate_expired_passwords_for_real(store, sshd, prefect_client_sync):
    from flows.credentials import expired_password, password_check, password_reconciliation
    from flows.operations import (
        expired_operation_cancellation,
        operation_executor,
        operation_executor_retry,
    )

    now = utcnow()
    dev, acc = make_device(store, sshd)
    olds = []
    for i in range(3):
        pw = nasty(f"robot{i}")
        c = add_credential(store, dev, sshd.add_account(pw), pw,
                           expires_at=now - timedelta(minutes=i + 1), change_interval_days=7)
        olds.append((c, pw))
    stale = queue.enqueue(store, "verify", olds[0][0].id, not_before=now - timedelta(minutes=5),
                          expires_at=now - timedelta(minutes=1)).id

    cancelled = expired_operation_cancellation()
    queued = expired_password()
    summary = operation_executor(lifetime_s=2.0, poll_s=0.2, batch_size=10, workers=4)
    checks = password_check(max_age_hours=0.0001)
    operation_executor(lifetime_s=1.0, poll_s=0.2)
    retried = operation_executor_retry()
    reconciled = password_reconciliation()

    assert [c.id for c in cancelled] == [stale]
    assert {q.credential_id for q in queued} == {c.id for c, _ in olds}
    assert summary["succeeded"] == 3 and summary["failed"] == 0  # flows return plain dicts
    assert {q.credential_id for q in checks} >= {c.id for c, _ in olds}
    assert retried == [] and reconciled["reconcile_queued"] == 0
    news = [(c.username, secret_of(store, c.id)) for c, _ in olds]
    assert logins(sshd.port, news) == [True] * 3
    assert logins(sshd.port, [(c.username, pw) for c, pw in olds]) == [False] * 3
    with Session(store) as db:
        for c, _ in olds:
            row = db.get(Credential, c.id)
            assert row.status == "ok" and row.expires_at > now + timedelta(days=6)
            assert row.last_verified_at is not None
        assert db.exec(select(Notification).where(Notification.type == "Password confirmed")).first()
    kinds = {o.kind: o.state for o in operations(store) if o.id != stale}
    assert kinds == {"change": "succeeded", "verify": "succeeded"}
    text = _artifacts(prefect_client_sync, ["operation-executor", "expired-password",
                                            "password-check", "expired-operation-cancellation",
                                            "password-reconciliation",
                                            "operation-executor-progress"])
    assert "expired-password" in text and olds[0][0].username in text
    secrets_all = [pw for _c, pw in olds] + [p for _u, p in news] + [acc["admin"][1]]
    for s in secrets_all:
        assert s not in text
    with Session(store) as db:  # ciphertexts are never published either
        creds = db.exec(select(Credential)).all()
        for c in creds:
            if c.secret:
                assert c.secret not in text
