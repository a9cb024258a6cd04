"""The email sender flow on the real Prefect server, with its blocks: the robots that queue
notifications (connectivity, the operation executor on the real sshd, reminders) reach a
real SMTP server end to end; the CLI (list, show, resend, routes, secret, types)."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import Device, NotificationMessage, utcnow
from pamflow.notifications.secrets import get_secret, set_secret
from pamflow.targets import reset_targets
from tests.test_rotation import add_credential, make_device, nasty


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    reset_targets()
    yield
    reset_targets()


def save_blocks(smtpd, routes) -> None:
    from blocks.notification_routing import NotificationRoutingBlock, RouteSpec, SmtpServerBlock

    SmtpServerBlock(host="127.0.0.1", port=smtpd.port, security="starttls",
                    from_address="pamflow@example.test", username="robot",
                    password_secret="smtp-password", ca_file=str(smtpd.ca.ca_file),
                    timeout=10).save("test-notify", overwrite=True)
    NotificationRoutingBlock(routes=[RouteSpec(**r) for r in routes]).save("test-notify",
                                                                          overwrite=True)


def test_robots_deliver_end_to_end_through_the_sender_flow(store, sshd, smtpd, prefect_client_sync):
    from flows.credentials import expired_password
    from flows.notifications import email_sender
    from flows.operations import operation_executor
    from pamflow.connectivity import check_devices
    from pamflow.credentials import queue_change_reminders

    with Session(store) as s:
        set_secret(s, "smtp-password", "s3cret-pw")
        s.commit()
    save_blocks(smtpd, [{"match": "*", "recipient": "ops@example.test"},
                        {"match": "Password operation", "recipient": "dba@example.test"}])
    now = utcnow()
    # the operation executor rotates an expired password on the real sshd
    dev, _ = make_device(store, sshd)
    pw = nasty("notify")
    add_credential(store, dev, sshd.add_account(pw), pw, expires_at=now - timedelta(minutes=1))
    add_credential(store, dev, "soon", "x-soon", expires_at=now + timedelta(days=3))
    expired_password()
    operation_executor(lifetime_s=2.0, poll_s=0.2, batch_size=10, workers=2)
    # reminders
    assert len(queue_change_reminders(store, days_before=7, now=now)) == 1
    # connectivity: a device that answered before is refused now
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with Session(store) as s:
        s.add(Device(name="lost-one", address="127.0.0.2", ports=[port], connectivity="reachable"))
        s.commit()
    assert check_devices(store, connect_timeout=2.0, banner_timeout=2.0, processes=1).lost == ["lost-one"]

    summary = email_sender(lifetime_s=60, poll_s=0.2, idle_s=0.0, settle_s=0.0,
                           smtp_block="test-notify", routing_block="test-notify")
    got = {(r.rcpt[0], r.subject.split(":")[0]) for r in smtpd.recorder.received}
    assert {("ops@example.test", "Change Executed"), ("ops@example.test", "Password changed"),
            ("ops@example.test", "Password change reminder"),
            ("ops@example.test", "Lost of connectivity"),
            ("dba@example.test", "Change Executed")} <= got
    assert summary["sent"] == len(smtpd.recorder.received) and summary["dead"] == 0
    assert summary["left"].get("notification_queued", 0) == 0
    ids = smtpd.recorder.ids()
    assert len(ids) == len(set(ids))
    assert all(pw not in r.raw.decode("utf-8", "replace") for r in smtpd.recorder.received)

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    arts = prefect_client_sync.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["email-sender"])))
    assert arts and "sent" in json.dumps([a.data for a in arts], default=str)
    assert "s3cret-pw" not in json.dumps([(a.data, a.description) for a in arts], default=str)


def test_cli_list_show_resend_routes_secret_types(store, smtpd):
    from pamflow import notifications
    from pamflow.notifications.sender import SenderSettings, deliver, plan
    from tests.test_email_sender import email_only, smtp_settings

    runner = CliRunner()
    out = runner.invoke(app, ["notifications", "routes", "add", "Devices", "noc@example.test",
                              "--json"])
    assert out.exit_code == 0, out.output
    route_id = json.loads(out.output)["id"]
    bad = runner.invoke(app, ["notifications", "routes", "add", "Nope", "x@example.test"])
    assert bad.exit_code == 2 and "neither" in bad.output and "Traceback" not in bad.output
    listed = runner.invoke(app, ["notifications", "routes", "list", "--json"])
    assert json.loads(listed.output.splitlines()[0])["recipient"] == "noc@example.test"
    with Session(store) as s:
        notifications.queue(s, "Lost of connectivity", context=notifications.sample(
            "Lost of connectivity"))
        s.commit()
    plan(store)
    smtpd.recorder.refuse_code = 550
    deliver(store, email_only(smtp_settings(smtpd)), SenderSettings(backoff_s=0))
    dead = runner.invoke(app, ["notifications", "list", "--state", "dead", "--json"])
    row = json.loads(dead.output.splitlines()[0])
    assert row["state"] == "dead" and "550" in row["error"]
    shown = runner.invoke(app, ["notifications", "show", str(row["id"])])
    assert "Lost of connectivity: db-01" in shown.output and "timed out" in shown.output
    assert runner.invoke(app, ["notifications", "show", "999999"]).exit_code == 2
    smtpd.recorder.refuse_code = None
    resent = runner.invoke(app, ["notifications", "resend", str(row["id"]), "--json"])
    assert json.loads(resent.output) == {"resent": 1, "asked": 1}
    deliver(store, email_only(smtp_settings(smtpd)), SenderSettings())
    assert [r.message_id for r in smtpd.recorder.received] == [row["message_id"]]  # same id
    queued = runner.invoke(app, ["notifications", "list", "--notifications", "--json"])
    assert json.loads(queued.output.splitlines()[0])["state"] == "routed"
    assert runner.invoke(app, ["notifications", "list", "--state", "bogus"]).exit_code == 2
    types = runner.invoke(app, ["notifications", "types", "--json"])
    assert len(types.output.splitlines()) >= 150
    sec = runner.invoke(app, ["notifications", "secret", "set", "hook-key"], input="k3y-value\n")
    assert sec.exit_code == 0 and "k3y-value" not in sec.output
    with Session(store) as s:
        assert get_secret(s, "hook-key") == "k3y-value"
    for name, value in (("../etc", "x"), ("ok", ""), ("ok", "a\x00b")):
        res = runner.invoke(app, ["notifications", "secret", "set", name], input=value + "\n")
        assert res.exit_code == 2 and "Traceback" not in res.output
    assert runner.invoke(app, ["notifications", "routes", "remove", str(route_id)]).exit_code == 0
    assert runner.invoke(app, ["notifications", "routes", "remove", str(route_id)]).exit_code == 2


@pytest.mark.parametrize("recipient", [
    "x" * 5000, "a@b.c\nBcc: evil@example.test", "\udcff@example.test", "user:" + "a" * 300,
    "group:ops;rm -rf /", "<script>@example.test", "ops@example.test\x00",
])
def test_cli_refuses_hostile_routes_without_traceback(store, recipient):
    runner = CliRunner()
    res = runner.invoke(app, ["notifications", "routes", "add", "*", recipient])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    with Session(store) as s:
        assert s.exec(select(NotificationMessage)).all() == []


def test_routing_block_refuses_bad_routes_on_save():
    from pydantic import ValidationError

    from blocks.notification_routing import NotificationRoutingBlock, RouteSpec

    with pytest.raises(ValidationError, match="route 2"):
        NotificationRoutingBlock(routes=[RouteSpec(match="*", recipient="a@example.test"),
                                         RouteSpec(match="*", recipient="not-an-address")])
    with pytest.raises(ValidationError):
        RouteSpec(match="*", recipient="a@example.test", channel="pigeon")


def test_a_commit_that_queued_notifications_emits_one_event(store, prefect_server, monkeypatch):
    import time

    import httpx
    from prefect.events.worker import EventsWorker

    from pamflow import notifications
    from pamflow.notifications import queueing

    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "1")
    monkeypatch.setattr(queueing, "_last_emit", 0.0)
    since = utcnow()
    with Session(store) as s:
        for name in ("Audit trail", "Password Expired"):
            notifications.queue(s, name, context=notifications.sample(name))
        s.rollback()  # nothing queued: no event
        notifications.queue(s, "Audit trail", context={"summary": "x"})
        s.commit()
    EventsWorker.drain_all(timeout=10)
    found: list = []
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline:
        page = httpx.post(f"{prefect_server}/events/filter", json={
            "filter": {"event": {"name": ["pam.notification.queued"]},
                       "occurred": {"since": since.isoformat()}}, "limit": 50}, timeout=10).json()
        found = page["events"]
        if not found:
            time.sleep(0.5)
    assert len(found) == 1 and found[0]["payload"] == {}
