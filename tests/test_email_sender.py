"""The email sender against a real SMTP server (aiosmtpd on 127.0.0.1, STARTTLS under a test
CA, AUTH): every catalogue type delivered, storm control, retries and dead messages,
a dropped connection, an absent server, and a sender SIGKILLed mid-batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow import notifications
from pamflow.models import AccessGroup, AccessGroupMember, Device, NotificationMessage, User
from pamflow.notifications import CATALOGUE, sample
from pamflow.notifications.channels import SmtpChannel, SmtpSettings
from pamflow.notifications.routing import Route, RouteError, add_route
from pamflow.notifications.sender import SenderSettings, deliver, plan, plan_digest
from tests.fixtures.smtpd import Recorder, SmtpServer, wait_for

ROOT = Path(__file__).resolve().parents[1]
FAST = SenderSettings(batch_size=50, max_attempts=3, backoff_s=0.0, lease_s=60)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


def smtp_settings(server: SmtpServer, **kw) -> SmtpSettings:
    base = dict(host="127.0.0.1", port=server.port, security=server.mode,
                from_address="pamflow@example.test", username="robot", password="s3cret-pw",
                ca_file=str(server.ca.ca_file) if server.ca else None, timeout=10)
    return SmtpSettings(**{**base, **kw})


def email_only(settings: SmtpSettings):
    return lambda name: SmtpChannel(settings)


def route(engine, match="*", recipient="ops@example.test", **kw) -> None:
    with Session(engine) as s:
        add_route(s, Route(match=match, recipient=recipient, **kw))
        s.commit()


def queue_samples(engine, names, **kw) -> None:
    with Session(engine) as s:
        for name in names:
            notifications.queue(s, name, context=sample(name), **kw)
        s.commit()


def states(engine) -> Counter:
    with Session(engine) as s:
        return Counter(m.state for m in s.exec(select(NotificationMessage)).all())


def drain(engine, settings: SmtpSettings, rounds: int = 10, **kw) -> None:
    """Deliver until nothing is due (retries are due at once: backoff 0)."""
    for _ in range(rounds):
        report = deliver(engine, email_only(settings), FAST, **kw)
        if not (report.sent or report.retried or report.dead):
            return


# ----------------------------------------------------------------------------- every type
@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_every_catalogue_type_is_rendered_and_delivered(backend, request, smtpd):
    engine = request.getfixturevalue(backend)
    route(engine)
    queue_samples(engine, sorted(CATALOGUE))
    report = plan(engine)
    assert report.notifications == len(CATALOGUE) == report.messages and report.unrouted == 0
    sent = deliver(engine, email_only(smtp_settings(smtpd)), FAST)
    assert sent.sent == len(CATALOGUE) and sent.dead == 0 and sent.connections == 1
    got = smtpd.recorder.received
    assert len(got) == len(CATALOGUE) and len({r.message_id for r in got}) == len(got)
    assert all(r.rcpt == ["ops@example.test"] and r.text.strip() and r.html for r in got)
    assert all("[missing" not in r.text for r in got)
    with Session(engine) as s:
        ids = {m.message_id for m in s.exec(select(NotificationMessage)).all()}
        assert ids == {r.message_id for r in got}
    assert states(engine) == {"sent": len(CATALOGUE)}


def test_implicit_tls_and_a_wrong_ca_or_cleartext_are_refused(test_ca, tmp_path, store):
    from tests.fixtures.smtpd import make_ca

    tls = SmtpServer(Recorder(), "tls", test_ca, users={"robot": "s3cret-pw"}).start()
    try:
        route(store)
        queue_samples(store, ["Audit trail"])
        plan(store)
        other_ca = make_ca(tmp_path / "other")
        deliver(store, email_only(smtp_settings(tls, ca_file=str(other_ca.ca_file))), FAST,
                max_batches=1)
        with Session(store) as s:
            [m] = s.exec(select(NotificationMessage)).all()
            assert m.state == "pending" and m.attempts == 1 and "TLS" in (m.error or "")
        drain(store, smtp_settings(tls))
        assert len(tls.recorder.received) == 1 and states(store) == {"sent": 1}
    finally:
        tls.stop()
    with pytest.raises(ValueError, match="allow_cleartext"):
        SmtpSettings(host="127.0.0.1", security="plain")


def test_a_server_without_starttls_is_not_used_in_cleartext(store, caplog):
    plain = SmtpServer(Recorder(), "plain").start()
    try:
        route(store)
        queue_samples(store, ["Audit trail"])
        plan(store)
        drain(store, smtp_settings(plain, username=None, security="starttls"))
        assert plain.recorder.received == [] and states(store) == {"dead": 1}
        with Session(store) as s:
            assert "STARTTLS" in s.exec(select(NotificationMessage)).one().error
        # explicit opt-in: sent, and warned
        with Session(store) as s:
            s.execute(sa.update(NotificationMessage).values(state="pending", attempts=0))
            s.commit()
        drain(store, smtp_settings(plain, username=None, security="plain", allow_cleartext=True))
        assert len(plain.recorder.received) == 1
        assert "WITHOUT TLS" in caplog.text
    finally:
        plain.stop()


# ----------------------------------------------------------------------------- routing / storm
def test_routing_by_type_family_user_group_severity_and_tenant(store, smtpd):
    with Session(store) as s:
        alice = User(username="alice", email="alice@example.test")
        bob = User(username="bob", email="bob@example.test")
        carol = User(username="carol", email="carol@example.test", status="locked")
        ops = AccessGroup(name="ops")
        s.add_all([alice, bob, carol, ops])
        s.flush()
        s.add_all([AccessGroupMember(group_id=ops.id, user_id=u.id) for u in (bob, carol)])
        s.commit()
    route(store, "Lost of connectivity", "user:alice")
    route(store, "Devices", "group:ops")  # the family: both device types
    route(store, "*", "audit@example.test", min_severity="critical")
    route(store, "*", "acme@example.test", tenant="acme")
    queue_samples(store, ["Lost of connectivity", "Reestabilished Connectivity", "Audit trail"])
    queue_samples(store, ["Audit trail"], tenant="acme")
    report = plan(store)
    assert report.unrouted == 1  # the default tenant's Audit trail: info, below "critical"
    deliver(store, email_only(smtp_settings(smtpd)), FAST)
    got = sorted((r.rcpt[0], r.subject.split(":")[0]) for r in smtpd.recorder.received)
    assert got == [("acme@example.test", "Audit trail"),
                   ("alice@example.test", "Lost of connectivity"),
                   ("audit@example.test", "Lost of connectivity"),
                   ("bob@example.test", "Connectivity restored"),
                   ("bob@example.test", "Lost of connectivity")]  # carol is locked


def test_a_route_on_the_old_name_matches_the_new_one_and_bad_routes_are_refused(store):
    with Session(store) as s:
        for bad, why in [(Route("No such type", "a@b.c"), "neither"),
                         (Route("*", "not an address"), "e-mail"),
                         (Route("*", "user:../../etc"), "characters"),
                         (Route("*", "a@b.c\r\nBcc: x@y.z"), "control"),
                         (Route("*", "udp://h:99999", channel="syslog"), "port"),
                         (Route("*", "http://example.test/x", channel="webhook", secret_ref="k"),
                          "https"),
                         (Route("*", "https://example.test/x", channel="webhook"), "secret"),
                         (Route("*", "a@b.c", tenant="../x"), "tenant"),
                         (Route("*", "a@b.c", channel="pigeon"), "channel")]:
            with pytest.raises(RouteError, match=why):
                add_route(s, bad)
    assert Route("Reestabilished Connectivity", "a@b.c").matches(
        "Connectivity restored", "Devices", "info", "default")


def test_a_thousand_devices_lost_in_one_connectivity_run_make_one_message_per_recipient(store, smtpd):
    from pamflow.connectivity import check_devices

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # (every 127.x address is this host)
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: every probe is refused at once
    with Session(store) as s:
        s.add_all([Device(name=f"dev{i:04d}", address=f"127.0.{i // 250}.{i % 250 + 1}", ports=[port],
                          connectivity="reachable") for i in range(1000)])
        s.commit()
    route(store, "Devices", "noc@example.test")
    route(store, "Lost of connectivity", "oncall@example.test")
    report = check_devices(store, connect_timeout=2.0, banner_timeout=2.0, processes=1)
    assert len(report.lost) == 1000
    planned = plan(store)
    assert planned.notifications == 1000 and planned.messages == 2 and planned.grouped == 2000
    deliver(store, email_only(smtp_settings(smtpd)), FAST)
    got = smtpd.recorder.received
    assert sorted(r.rcpt[0] for r in got) == ["noc@example.test", "oncall@example.test"]
    assert all(r.subject == "1000 × Lost of connectivity" for r in got)
    assert "dev0000" in got[0].text and "and 800 more" in got[0].text
    # the same devices lost again within the window: counted, not sent again
    with Session(store) as s:
        s.execute(sa.update(Device).values(connectivity="reachable"))
        s.commit()
    again = check_devices(store, connect_timeout=2.0, banner_timeout=2.0, processes=1)
    assert len(again.lost) == 1000
    assert plan(store).notifications == 0
    with Session(store) as s:
        assert {n.repeats for n in s.exec(select(notifications.queueing.Notification)).all()} == {1}


def test_digest_routes_gather_a_day_into_one_message(store, smtpd):
    route(store, "*", "boss@example.test", mode="digest")
    route(store, "Lost of connectivity", "boss@example.test")  # this one at once too
    queue_samples(store, ["Audit trail", "Lost of connectivity", "Password Expired"])
    plan(store)
    deliver(store, email_only(smtp_settings(smtpd)), FAST)
    assert [r.subject.split(":")[0] for r in smtpd.recorder.received] == ["Lost of connectivity"]
    assert plan_digest(store) == 1
    deliver(store, email_only(smtp_settings(smtpd)), FAST)
    digest = smtpd.recorder.received[-1]
    assert digest.subject == "Daily digest: 2 notification(s)"
    assert "Audit trail" in digest.text and "Password Expired" in digest.text
    assert plan_digest(store) == 0


# ----------------------------------------------------------------------------- failures
def test_a_refusing_server_leads_to_retries_then_dead(store, smtpd):
    route(store)
    queue_samples(store, ["Audit trail", "Password Expired"])
    plan(store)
    smtpd.recorder.refuse_code = 451  # temporary: retried
    drain(store, smtp_settings(smtpd))
    with Session(store) as s:
        rows = s.exec(select(NotificationMessage)).all()
        assert {(m.state, m.attempts) for m in rows} == {("dead", 3)}
        assert all("451" in (m.error or "") for m in rows)
    assert smtpd.recorder.received == []


def test_a_permanent_refusal_is_dead_at_once(store, smtpd):
    route(store)
    queue_samples(store, ["Audit trail"])
    plan(store)
    smtpd.recorder.refuse_code = 550
    drain(store, smtp_settings(smtpd))
    with Session(store) as s:
        m = s.exec(select(NotificationMessage)).one()
        assert (m.state, m.attempts) == ("dead", 1) and "550" in m.error


def test_a_connection_dropped_mid_batch_loses_and_doubles_nothing(store, smtpd):
    route(store)
    names = sorted(CATALOGUE)[:40]
    queue_samples(store, names)
    plan(store)
    smtpd.recorder.drop_at = {5, 17, 18, 30}  # during DATA: the server never said 250
    drain(store, smtp_settings(smtpd))
    ids = smtpd.recorder.ids()
    assert len(ids) == 40 and len(set(ids)) == 40
    assert states(store) == {"sent": 40}


def test_an_absent_server_retries_then_dead_then_resend_delivers(store, smtpd):
    route(store)
    queue_samples(store, ["Audit trail", "Password Expired", "Download"])
    plan(store)
    gone = SmtpServer(Recorder(), "starttls", smtpd.ca)  # a port nobody listens on
    drain(store, smtp_settings(gone))
    with Session(store) as s:
        rows = s.exec(select(NotificationMessage)).all()
        assert {(m.state, m.attempts) for m in rows} == {("dead", 3)}
        assert all("cannot reach" in m.error for m in rows)
    from pamflow.notifications.admin import resend

    with Session(store) as s:
        assert resend(s, [m.id for m in rows]) == 3
        s.commit()
    drain(store, smtp_settings(smtpd))
    assert len(smtpd.recorder.received) == 3 and states(store) == {"sent": 3}


# ----------------------------------------------------------------------------- SIGKILL
SENDER = textwrap.dedent("""
    import sys
    from pamflow.db import store
    from pamflow.notifications.channels import SmtpChannel, SmtpSettings
    from pamflow.notifications.sender import SenderSettings, deliver
    port, ca = int(sys.argv[1]), sys.argv[2]
    s = SmtpSettings("127.0.0.1", port, "starttls", "pamflow@example.test", "robot", "s3cret-pw", ca,
                     timeout=60)
    deliver(store(), lambda name: SmtpChannel(s), SenderSettings(batch_size=25, lease_s=2))
""")


def test_a_sender_killed_mid_batch_doubles_and_loses_nothing(store, smtpd):
    route(store)
    names = sorted(CATALOGUE)[:60]
    queue_samples(store, names)
    plan(store)
    smtpd.recorder.stall_after = 13  # the 14th DATA never gets its 250: kill the sender there
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SENDER, str(smtpd.port), str(smtpd.ca.ca_file)],
                            env=env, cwd=ROOT)
    try:
        assert smtpd.recorder.stalled.wait(60), "the sender never reached the 14th message"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(smtpd.recorder.received) == 13
    with Session(store) as s:
        held = s.exec(select(NotificationMessage).where(NotificationMessage.lease_owner != None)).all()  # noqa: E711
        assert held and all(m.state == "pending" for m in held)  # still leased to the dead sender
    smtpd.recorder.stall_after = None
    assert wait_for(lambda: deliver(store, email_only(smtp_settings(smtpd)), FAST).sent == 0
                    and states(store) == {"sent": 60}, timeout=30, step=0.5)
    ids = smtpd.recorder.ids()
    assert len(ids) == 60 and len(set(ids)) == 60
    with Session(store) as s:
        assert {m.message_id for m in s.exec(select(NotificationMessage)).all()} == set(ids)
