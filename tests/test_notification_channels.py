"""The other channels, routed and delivered by the same sender: RFC 5424 syslog to a UDP and
a TCP receiver, and push messages to a webhook receiver that checks pamflow's HMAC
signature with the gateway's own code; bulk mail to a group."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow import notifications
from pamflow.cli import app
from pamflow.models import AccessGroup, AccessGroupMember, NotificationMessage, User
from pamflow.notifications.channels import SyslogChannel, WebhookChannel
from pamflow.notifications.routing import Route, add_route
from pamflow.notifications.secrets import get_secret, set_secret
from pamflow.notifications.sender import SenderSettings, deliver, plan
from pamflow.webhooks import signing


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


def channels(engine):
    def secret_of(name: str) -> str:
        with Session(engine) as s:
            return get_secret(s, name)

    def make(name: str):
        return SyslogChannel(timeout=5) if name == "syslog" else WebhookChannel(secret_of, timeout=5)
    return make


def test_syslog_over_udp_and_tcp(store):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    tcp.settimeout(10)
    with Session(store) as s:
        add_route(s, Route("*", f"udp://127.0.0.1:{udp.getsockname()[1]}", channel="syslog"))
        add_route(s, Route("Devices", f"tcp://127.0.0.1:{tcp.getsockname()[1]}", channel="syslog"))
        notifications.queue(s, "Lost of connectivity",
                            context=notifications.sample("Lost of connectivity"))
        notifications.queue(s, "Audit trail", context={"summary": "user bob\nchanged"})
        s.commit()
    plan(store)
    report = deliver(store, channels(store), SenderSettings(max_attempts=2, backoff_s=0))
    assert report.sent == 3 and report.dead == 0
    lines = sorted(udp.recvfrom(9000)[0].decode() for _ in range(2))
    conn, _ = tcp.accept()
    conn.settimeout(10)
    framed = conn.recv(9000).decode()
    length, _, line = framed.partition(" ")
    assert int(length) == len(line.encode())
    assert line.startswith("<130>1 ") and " pamflow - Lostofconnectivity - " in line  # local0.crit
    assert lines[1].startswith("<134>1 ") and "Audit trail" in lines[1] and "\n" not in lines[1]
    assert lines[0].startswith("<130>1 ") and "db-01" in lines[0]  # local0.info / local0.crit
    for sock in (conn, udp, tcp):
        sock.close()


class Hook(BaseHTTPRequestHandler):
    got: list = []
    secret = b""
    answer = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = signing.signing_bytes(self.headers[signing.TIMESTAMP_HEADER],
                                        self.headers[signing.DELIVERY_HEADER],
                                        self.headers[signing.EVENT_HEADER], body)
        ok = signing.signature_matches([self.secret], message,
                                       self.headers[signing.SIGNATURE_HEADER])
        Hook.got.append((ok, self.headers[signing.DELIVERY_HEADER], json.loads(body)))
        self.send_response(Hook.answer if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    Hook.got, Hook.answer = [], 200
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_push_messages_are_signed_like_the_gateway_and_retried(store, hook):
    key = signing.generate_secret()
    Hook.secret = key.encode()
    url = f"http://127.0.0.1:{hook.server_port}/push"
    with Session(store) as s:
        set_secret(s, "push-key", key)
        add_route(s, Route("Credentials", url, channel="webhook", secret_ref="push-key"))
        notifications.queue(s, "Password Expired", context=notifications.sample("Password Expired"))
        s.commit()
    plan(store)
    Hook.answer = 503
    first = deliver(store, channels(store), SenderSettings(max_attempts=3, backoff_s=0), max_batches=1)
    assert first.retried == 1
    Hook.answer = 200
    deliver(store, channels(store), SenderSettings(max_attempts=3, backoff_s=0))
    assert [ok for ok, _, _ in Hook.got] == [True, True]
    assert Hook.got[0][1] == Hook.got[1][1]  # the same delivery id: the receiver can dedupe
    body = Hook.got[1][2]
    assert body["type"] == "Password Expired" and "root@db-01" in body["text"]
    assert key not in json.dumps(body)
    with Session(store) as s:
        assert s.exec(select(NotificationMessage)).one().state == "sent"
    # a wrong key: the receiver refuses (401), a permanent error -> dead at once
    with Session(store) as s:
        set_secret(s, "push-key", signing.generate_secret())
        notifications.queue(s, "Password Expired", context={"count": 1, "credentials": ["x@y"]})
        s.commit()
    plan(store)
    deliver(store, channels(store), SenderSettings(max_attempts=3, backoff_s=0))
    with Session(store) as s:
        dead = s.exec(select(NotificationMessage).where(NotificationMessage.state == "dead")).one()
        assert dead.attempts == 1 and "401" in dead.error


def test_bulk_mail_to_a_group(store, smtpd):
    from tests.test_email_sender import email_only, smtp_settings

    with Session(store) as s:
        users = [User(username=f"u{i}", email=f"u{i}@example.test") for i in range(3)]
        group = AccessGroup(name="admins")
        s.add_all([*users, group])
        s.flush()
        s.add_all([AccessGroupMember(group_id=group.id, user_id=u.id) for u in users])
        s.commit()
    runner = CliRunner()
    res = runner.invoke(app, ["notifications", "bulk", "group:admins", "--title", "Maintenance",
                              "--json"], input="Portal down at <22:00> UTC.\nSorry.\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["recipients"] == ["group:admins"]
    plan(store)
    deliver(store, email_only(smtp_settings(smtpd)), SenderSettings())
    got = smtpd.recorder.received
    assert sorted(r.rcpt[0] for r in got) == ["u0@example.test", "u1@example.test", "u2@example.test"]
    assert all(r.subject == "Maintenance" and "Portal down at <22:00> UTC." in r.text for r in got)
    assert all("&lt;22:00&gt;" in (r.html or "") for r in got)
    for bad in (["user:../x"], ["nobody"], ["group:admins", "--title", "x\ny"]):
        res = runner.invoke(app, ["notifications", "bulk", *bad], input="x\n")
        assert res.exit_code == 2 and "Traceback" not in res.output
    res = runner.invoke(app, ["notifications", "bulk", "group:admins", "--title", "t"],
                        input="x" * 70_000)
    assert res.exit_code == 2 and "Traceback" not in res.output
