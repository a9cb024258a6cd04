"""MFA token mail: a one-time code mailed to a real SMTP server, sealed in the store, single
use, expiring, a few tries; nothing readable in the queue, the audit log or the result."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import AuditLog, MfaToken, Notification, NotificationMessage, User, utcnow
from pamflow.notifications.channels import SmtpChannel
from pamflow.notifications.mfa import MAX_ATTEMPTS, MfaError, mail_token, verify
from tests.test_email_sender import smtp_settings


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


def user(engine, name="alice", **kw):
    with Session(engine) as s:
        s.add(User(username=name, email=f"{name}@example.test", **kw))
        s.commit()


def code_in(received) -> str:
    return re.search(r"code is (\d{6})", received.text).group(1)


def test_a_code_is_mailed_sealed_and_accepted_once(store, smtpd):
    user(store)
    issued = mail_token(store, SmtpChannel(smtp_settings(smtpd)), "alice")
    [mail] = smtpd.recorder.received
    code = code_in(mail)
    assert mail.rcpt == ["alice@example.test"] and mail.message_id == issued.message_id
    assert code in (mail.html or "")
    with Session(store) as s:
        token = s.exec(select(MfaToken)).one()
        assert code not in token.code and token.code.startswith("pfv1.")
        everything = json.dumps([[a.detail for a in s.exec(select(AuditLog)).all()],
                                 [n.body for n in s.exec(select(Notification)).all()],
                                 [m.text for m in s.exec(select(NotificationMessage)).all()]])
        assert code not in everything
        assert not verify(s, "alice", "000000" if code != "000000" else "111111")
        assert verify(s, "alice", code)
        s.commit()
        assert not verify(s, "alice", code)  # single use
        s.commit()


def test_expired_revoked_and_too_many_tries_are_refused(store, smtpd):
    user(store)
    channel = SmtpChannel(smtp_settings(smtpd))
    mail_token(store, channel, "alice", ttl_s=60)
    old = code_in(smtpd.recorder.received[-1])
    mail_token(store, channel, "alice", ttl_s=60)  # a new code revokes the older one
    new = code_in(smtpd.recorder.received[-1])
    with Session(store) as s:
        if old != new:
            assert not verify(s, "alice", old)
        assert not verify(s, "alice", new, now=utcnow() + timedelta(seconds=61))  # expired
        s.commit()
    mail_token(store, channel, "alice")
    code = code_in(smtpd.recorder.received[-1])
    wrong = "999999" if code != "999999" else "888888"
    with Session(store) as s:
        for _ in range(MAX_ATTEMPTS):
            assert not verify(s, "alice", wrong)
        s.commit()
        assert not verify(s, "alice", code)  # locked after MAX_ATTEMPTS wrong tries


def test_unknown_inactive_users_and_a_failed_mail_issue_nothing_usable(store, smtpd):
    user(store, "locked", status="locked")
    channel = SmtpChannel(smtp_settings(smtpd))
    for name in ("nobody", "locked", "x" * 10_000, "alice'; DROP TABLE mfa_token;--"):
        with pytest.raises(MfaError):
            mail_token(store, channel, name)
    user(store)
    smtpd.recorder.refuse_code = 550
    with pytest.raises(MfaError, match="could not be mailed"):
        mail_token(store, channel, "alice")
    with Session(store) as s:
        assert s.exec(select(MfaToken)).one().revoked_at is not None


def test_cli_mfa_verify(store, smtpd):
    user(store)
    mail_token(store, SmtpChannel(smtp_settings(smtpd)), "alice")
    code = code_in(smtpd.recorder.received[-1])
    runner = CliRunner()
    bad = runner.invoke(app, ["notifications", "mfa-verify", "alice", "--json"], input="12\n")
    assert bad.exit_code == 1 and json.loads(bad.output)["valid"] is False
    ok = runner.invoke(app, ["notifications", "mfa-verify", "alice"], input=code + "\n")
    assert ok.exit_code == 0 and "accepted" in ok.output and code not in ok.output
    again = runner.invoke(app, ["notifications", "mfa-verify", "alice"], input=code + "\n")
    assert again.exit_code == 1
    weird = runner.invoke(app, ["notifications", "mfa-verify", "\udcff" * 300], input="\x00" * 100)
    assert weird.exit_code == 1 and "Traceback" not in weird.output
