"""Password reservations: the rules (domain), ``pamflow reservations``, the robot's passes
racing, and the ``pam.reservation.requested`` event through the real gateway, the real
Prefect server's trigger and a real worker."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow import db, platform
from pamflow.cli import app
from pamflow.credentials import process_reservations, reservations
from pamflow.credentials.reservations import ReservationError
from pamflow.models import AuditLog, Credential, Device, Operation, PasswordReservation, utcnow
from pamflow.webhooks import signed_headers
from tests.test_e2e_webhooks import TERMINAL, Platform, wait_for

runner = CliRunner()


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


def account(engine, name: str = "app", tenant: str = "default", address: str = "10.80.0.1"
            ) -> Credential:
    with Session(engine, expire_on_commit=False) as db:
        dev = Device(name=f"{name}-host", address=address, tenant=tenant)
        db.add(dev)
        db.flush()
        cred = Credential(device_id=dev.id, username=name)
        db.add(cred)
        db.commit()
        return cred


def ops(engine) -> list[Operation]:
    with Session(engine) as db:
        return list(db.exec(select(Operation).order_by(Operation.id)))


def audits(engine, action: str) -> list[AuditLog]:
    with Session(engine) as db:
        return list(db.exec(select(AuditLog).where(AuditLog.action == action)))


# -- the rules -------------------------------------------------------------------------------

def test_a_reservation_is_made_listed_and_audited(store):
    cred = account(store)
    now = utcnow()
    made = reservations.create(store, cred.id, now + timedelta(hours=1), now + timedelta(hours=3),
                               "alice", change_on_start=False, note="release 4.2", actor="cli:bob")
    assert (made.account, made.device, made.tenant, made.state) == ("app", "app-host", "default",
                                                                   "scheduled")
    assert (made.change_on_start, made.change_on_end) == (False, True)
    [listed] = reservations.list_reservations(store, state="open")
    assert listed == made
    assert reservations.list_reservations(store, tenant="other") == []
    [row] = audits(store, "reservation.create")
    assert row.actor == "cli:bob" and row.entity_id == str(made.id)
    assert row.detail["requested_by"] == "alice" and row.detail["credential_id"] == cred.id


def test_the_rules_refuse_with_the_reason(store):
    cred = account(store)
    other = account(store, "other", tenant="acme", address="10.80.0.2")
    now = utcnow()
    first = reservations.create(store, cred.id, now + timedelta(hours=1), now + timedelta(hours=2),
                                "alice", now=now)
    h = lambda n: now + timedelta(hours=n)  # noqa: E731
    cases = [
        ((cred.id, h(1.5), h(3), "bob"), f"already reserved from {first.starts_at.isoformat()}"),
        ((cred.id, h(0), h(1.01), "bob"), f"(reservation {first.id}, scheduled)"),
        ((cred.id, h(-1), h(3), "bob"), "is in the past"),
        ((cred.id, h(5), h(4), "bob"), "is not after the start"),
        ((cred.id, h(5), h(5), "bob"), "is not after the start"),
        ((cred.id, h(5), h(5 + 24 * 400), "bob"), "at most 366 days"),
        ((999, h(5), h(6), "bob"), "no credential 999"),
        ((cred.id, h(5), h(6), "  "), "requested_by is required"),
        ((cred.id, h(5), h(6), "bo\x00b"), "control characters"),
    ]
    for args, reason in cases:
        with pytest.raises(ReservationError) as info:
            reservations.create(store, *args, now=now)
        assert reason in str(info.value), (args, info.value)
    with pytest.raises(ReservationError, match=f"no credential {other.id} in tenant 'default'"):
        reservations.create(store, other.id, h(1), h(2), "bob", tenant="default", now=now)
    # right after the first one ends is fine; a start a moment ago counts as now
    reservations.create(store, cred.id, h(2), h(3), "bob", now=now)
    reservations.create(store, other.id, now - timedelta(minutes=1), h(1), "carol", now=now)
    assert len(reservations.list_reservations(store)) == 3


def test_overlapping_requests_racing_make_one_reservation(pg_store):
    cred = account(pg_store)
    now = utcnow()
    results: list = []

    def reserve(who: str) -> None:
        try:
            results.append(reservations.create(pg_store, cred.id, now + timedelta(hours=1),
                                               now + timedelta(hours=2), who, now=now))
        except ReservationError as exc:
            results.append(exc)

    threads = [threading.Thread(target=reserve, args=(f"user{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [r for r in results if not isinstance(r, Exception)]
    assert len(made) == 1 and len(results) == 6
    assert all("already reserved" in str(r) for r in results if isinstance(r, Exception))


def test_cancel_ends_an_active_reservation_with_its_end_change(store):
    cred = account(store)
    now = utcnow()
    soon = reservations.create(store, cred.id, now + timedelta(hours=5), now + timedelta(hours=6),
                               "alice", now=now)
    live = reservations.create(store, cred.id, now, now + timedelta(hours=1), "bob", now=now)
    events = process_reservations(store, now=now + timedelta(seconds=1))
    assert [(e.reservation_id, e.phase, e.change_queued) for e in events] == [(live.id, "start", True)]

    done = reservations.cancel(store, soon.id, actor="cli:carol")
    assert (done.was_active, done.end_change_operation_id, done.reservation.state) == (
        False, None, "cancelled")
    done = reservations.cancel(store, live.id, actor="cli:carol")
    assert done.was_active and done.end_change_operation_id is not None and done.end_change_joined
    # the start's change is still queued (no executor ran): the end's joins it, one change
    op = next(o for o in ops(store) if o.id == done.end_change_operation_id)
    assert (op.kind, op.credential_id, op.state) == ("change", cred.id, "queued")
    # nothing queued for the credential: the end's change is a new operation
    quiet = account(store, "quiet", address="10.80.0.9")
    calm = reservations.create(store, quiet.id, now, now + timedelta(hours=1), "dan",
                               change_on_start=False, now=now)
    process_reservations(store, now=now + timedelta(seconds=2))
    done = reservations.cancel(store, calm.id, actor="cli:carol")
    assert done.was_active and not done.end_change_joined
    op = next(o for o in ops(store) if o.id == done.end_change_operation_id)
    assert (op.credential_id, op.parameters) == (quiet.id, {"reservation_id": calm.id, "phase": "end"})
    with pytest.raises(ReservationError, match=f"reservation {live.id} is already cancelled"):
        reservations.cancel(store, live.id, actor="cli:carol")
    with pytest.raises(ReservationError, match="no reservation 4242"):
        reservations.cancel(store, 4242, actor="cli:carol")
    assert process_reservations(store, now=now + timedelta(hours=7)) == []  # nothing left to end
    assert [a.detail["was"] for a in audits(store, "reservation.cancel")] == ["scheduled", "active",
                                                                             "active"]


def test_two_passes_at_once_start_a_reservation_once(pg_store):
    """The scheduled robot and a requested reservation's run may pass together: the first
    pass is held right before its first write until the second has committed; the held
    one then finds the reservation already started and leaves it (before, both started it:
    two audit rows, two notifications)."""
    cred = account(pg_store)
    now = utcnow()
    res = reservations.create(pg_store, cred.id, now, now + timedelta(hours=1), "alice", now=now)
    held, release = threading.Event(), threading.Event()
    out: list = []
    worker = threading.Thread(target=lambda: out.append(
        process_reservations(pg_store, now=now + timedelta(seconds=1))))

    def hold_first_write(conn, cursor, statement, *args):
        if threading.current_thread() is worker and not held.is_set() and \
                statement.lstrip().upper().startswith(("UPDATE", "INSERT")):
            held.set()
            release.wait(30)

    sa.event.listen(pg_store, "before_cursor_execute", hold_first_write)
    try:
        worker.start()
        assert held.wait(30)
        second = process_reservations(pg_store, now=now + timedelta(seconds=1))
        release.set()
        worker.join(60)
    finally:
        release.set()
        sa.event.remove(pg_store, "before_cursor_execute", hold_first_write)
    assert [e.reservation_id for e in second] == [res.id] and out == [[]]
    assert len(audits(pg_store, "reservation.start")) == 1
    assert [o.parameters for o in ops(pg_store)] == [{"reservation_id": res.id, "phase": "start"}]


# -- the CLI -----------------------------------------------------------------------------------

def run(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def test_cli_adds_lists_cancels_and_processes(store):
    cred = account(store, "svc")
    res = run("reservations", "add", "svc-host", "svc", "--start", "now", "--end", "+2h",
              "--by", "alice", "--note", "release 4.2")
    assert res.exit_code == 0, res.output
    assert "reservation 1: svc on svc-host (credential 1) for alice" in res.output
    assert "changes when it starts and when it ends" in res.output
    res = run("reservations", "add", str(cred.id), "--start", "+1h", "--end", "+30m", "--by", "bob")
    assert res.exit_code == 1 and "already reserved" in res.output and "Traceback" not in res.output
    res = run("reservations", "add", str(cred.id), "--start", "2001-01-01T00:00Z", "--end", "+1h")
    assert res.exit_code == 1 and "is in the past" in res.output
    res = run("reservations", "add", str(cred.id), "--start", "soon", "--end", "+1h")
    assert res.exit_code == 2 and "--start: 'soon' is not a time" in res.output
    res = run("reservations", "add", "999", "--end", "+1h")
    assert res.exit_code == 1 and "no credential with id 999" in res.output
    res = run("reservations", "add", str(cred.id), "--start", "+3h", "--end", "+1h",
              "--no-change-on-start", "--by", "carol")
    assert res.exit_code == 0 and "changes when it ends" in res.output

    res = run("reservations", "list", "--json")
    assert res.exit_code == 0, res.output
    listed = [json.loads(line) for line in res.output.splitlines()]
    assert [(r["id"], r["requested_by"], r["state"], r["change_on_start"]) for r in listed] == [
        (1, "alice", "scheduled", True), (2, "carol", "scheduled", False)]
    assert listed[0]["note"] == "release 4.2" and listed[0]["starts_at"].endswith("+00:00")

    res = run("reservations", "process")
    assert res.exit_code == 0 and "reservation 1 (credential 1) started: password change queued" \
        in res.output
    res = run("reservations", "cancel", "1")  # the start's change has not run yet: one change
    assert res.exit_code == 0, res.output
    assert "it was active: the password change for its end joined the change already queued " \
           "(operation 1)" in res.output
    res = run("reservations", "cancel", "2")
    assert res.exit_code == 0 and "it had not started: nothing to change" in res.output
    res = run("reservations", "cancel", "2")
    assert res.exit_code == 1 and "already cancelled" in res.output
    res = run("reservations", "list", "--state", "open")
    assert res.exit_code == 0 and "Reservations (0)" in res.output
    assert [(o.kind, o.state) for o in ops(store)] == [("change", "queued")]


# -- the event, end to end ---------------------------------------------------------------------

ROBOT = "password-reservation-request"


def test_a_requested_reservation_through_the_gateway_and_the_trigger(tmp_path):
    e2e = Platform(tmp_path)
    try:
        _requested_reservation_end_to_end(e2e)
    finally:
        e2e.stop()
        for log in ("gateway.log", "worker.log"):
            if (tmp_path / log).exists():
                print(f"---- {log} (tail)\n{(tmp_path / log).read_text()[-3000:]}")


def _pause(api: str, deployment_id: str) -> None:
    """Pause a deployment; a Prefect server on SQLite answers 503 while its database is busy
    (a loaded machine): asked again a few times."""
    for attempt in range(6):
        try:
            resp = httpx.patch(f"{api}/deployments/{deployment_id}", json={"paused": True},
                               timeout=30)
            if resp.status_code != 503:
                resp.raise_for_status()
                return
        except httpx.TimeoutException:
            if attempt == 5:
                raise
        time.sleep(2)
    raise AssertionError(f"the Prefect server kept answering 503 to pausing {deployment_id}")


def _requested_reservation_end_to_end(e2e: Platform) -> None:
    e2e.start_server()
    platform.ensure_work_pool(e2e.api)
    platform.deploy_all(e2e.api, platform.REPO_ROOT)
    deployments = {d["name"]: d for d in e2e.deployments()}
    robot_id = deployments[ROBOT]["id"]
    for name, dep in deployments.items():  # the scheduled robots stay out of the way
        if name != ROBOT:
            _pause(e2e.api, dep["id"])
    for run_ in e2e.api_post("/flow_runs/filter", {}):
        if run_["deployment_id"] != robot_id:
            httpx.delete(f"{e2e.api}/flow_runs/{run_['id']}", timeout=30)

    engine = db.make_engine(e2e.db_url)
    db.migrate(engine)
    mine = account(engine, "dba", tenant="acme", address="10.81.0.1")
    theirs = account(engine, "dba", tenant="globex", address="10.81.0.2")
    e2e.start_worker()
    secret = e2e.cli("webhooks", "add-source", "reservation", "--tenant", "acme"
                     ).stdout.strip().splitlines()[-1]
    e2e.start_gateway()

    def request(body: dict) -> str:
        raw = json.dumps(body).encode()
        resp = httpx.post(f"{e2e.gateway_url}/hooks/reservation", content=raw,
                          headers=signed_headers(secret, "requested", raw), timeout=30)
        assert resp.status_code == 202, resp.text
        return resp.json()["event_id"]

    def finished(n: int) -> list[dict]:
        runs = e2e.robot_runs(robot_id)
        return runs if len(runs) >= n and all(r["state_type"] in TERMINAL for r in runs) else []

    now = utcnow()
    request({"credential_id": mine.id, "starts_at": now.isoformat(),
             "ends_at": (now + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
             "requested_by": "alice", "change_on_end": False, "note": "incident 7"})
    [run_] = wait_for(lambda: finished(1), 240, "the requested reservation's run")
    assert run_["state_type"] == "COMPLETED", run_["state"]
    assert run_["parameters"]["request"]["tenant"] == "acme"
    with Session(engine) as s:
        [res] = s.exec(select(PasswordReservation)).all()
        assert (res.credential_id, res.requested_by, res.note, res.change_on_end, res.state) == (
            mine.id, "alice", "incident 7", False, "active")  # started in the same run
        [op] = s.exec(select(Operation)).all()
        assert (op.kind, op.credential_id, op.parameters["phase"]) == ("change", mine.id, "start")

    # a credential of another tenant than the source's: refused, nothing made
    request({"credential_id": theirs.id, "starts_at": now.isoformat(),
             "ends_at": (now + timedelta(hours=1)).isoformat(), "requested_by": "mallory"})
    runs = wait_for(lambda: finished(2), 240, "the refused request's run")
    refused = next(r for r in runs if r["id"] != run_["id"])
    assert refused["state_type"] == "FAILED"
    with Session(engine) as s:
        assert len(s.exec(select(PasswordReservation)).all()) == 1
    # a payload the schema refuses never reaches Prefect
    raw = json.dumps({"credential_id": "1", "starts_at": "x", "ends_at": "y",
                      "requested_by": "z"}).encode()
    resp = httpx.post(f"{e2e.gateway_url}/hooks/reservation", content=raw,
                      headers=signed_headers(secret, "requested", raw), timeout=30)
    assert resp.status_code == 422 and "credential_id must be an integer" in resp.text
    time.sleep(3)
    assert len(e2e.robot_runs(robot_id)) == 2
    engine.dispose()
