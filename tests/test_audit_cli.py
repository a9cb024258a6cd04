"""``pamflow audit list|verify``: the audit trail, filtered; the hash chain, walked streaming."""

from __future__ import annotations

import json
import tracemalloc
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from typer.testing import CliRunner

from pamflow import audit
from pamflow.cli import app
from pamflow.models import utcnow

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def trail(engine) -> None:
    with Session(engine) as s:
        audit.record(s, "cli:alice", "create", "device", 1, {"address": "10.0.0.1"})
        audit.record(s, "cli:alice", "secret_viewed", "credential", 7, {"via": "credentials secret"})
        audit.record(s, "robot:password-reservation", "reservation.start", "password_reservation", 3,
                     {"credential_id": 7})
        audit.record(s, "cli:bob", "secret_viewed", "credential", 8, {"via": "credentials show"})
        s.commit()


def listed(*args) -> list[dict]:
    res = run("audit", "list", "--json", *args)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.output.splitlines()]


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_audit_list_filters_newest_first(backend, request):
    engine = request.getfixturevalue(backend)
    trail(engine)
    everything = listed()
    assert [e["id"] for e in everything] == [4, 3, 2, 1]
    assert set(everything[0]) == {"id", "at", "actor", "action", "object_type", "object_id",
                                  "detail", "prev_hash", "hash"}
    assert [e["id"] for e in listed("--actor", "cli:alice")] == [2, 1]
    assert [e["id"] for e in listed("--actor", "robot:*")] == [3]
    assert [e["id"] for e in listed("--action", "secret_viewed")] == [4, 2]
    assert [e["id"] for e in listed("--action", "reservation.*")] == [3]
    assert [e["id"] for e in listed("--object", "credential")] == [4, 2]
    assert [e["id"] for e in listed("--object", "credential:7")] == [2]
    assert [e["id"] for e in listed("--limit", "2")] == [4, 3]
    assert listed("--since", "+1h") == [] and len(listed("--since", "-1h")) == 4
    assert listed("--until", "-1h") == []
    since = (utcnow() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")  # ISO, UTC
    assert len(listed("--since", since, "--until", "now")) == 4
    assert listed("--actor", "cli_alice") == []  # _ is no wildcard

    res = run("audit", "list", "--action", "secret_viewed")
    assert res.exit_code == 0 and "credential:7" in res.output and "credentials secret" in res.output
    res = run("audit", "list", "--since", "yesterday")
    assert res.exit_code == 2 and "--since: 'yesterday' is not a time" in res.output


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_audit_verify_finds_the_first_tampered_row(backend, request):
    engine = request.getfixturevalue(backend)
    trail(engine)
    res = run("audit", "verify", "--batch", "2")
    assert res.exit_code == 0 and "audit log intact: 4 entries checked" in res.output

    with engine.begin() as conn:  # someone edits a row in the database directly
        conn.execute(sa.text("UPDATE audit_log SET actor = 'cli:mallory' WHERE id = 2"))
    res = run("audit", "verify")
    assert res.exit_code == 1
    assert "audit log broken at entry 2 (2 entries checked): its content does not match its " \
           "hash" in res.output
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET actor = 'cli:alice' WHERE id = 2"))
        conn.execute(sa.text("DELETE FROM audit_log WHERE id = 3"))
    res = run("audit", "verify")
    assert res.exit_code == 1
    assert "audit log broken at entry 4 (3 entries checked): its prev_hash does not match row 2" \
        in res.output


def test_audit_verify_streams_the_chain(store):
    """20,000 entries are checked without holding them: the old check loaded every row
    (about 50 MB here); the streamed one stays near one batch."""
    with Session(store) as s:
        for i in range(20_000):
            audit.record(s, "tester", "x", "device", i, {"n": i, "pad": "p" * 200})
        s.commit()
    with Session(store) as s:
        tracemalloc.start()
        try:
            check = audit.check_chain(s)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert check.intact and check.rows == 20_000
    assert peak < 10_000_000, f"{peak:,} bytes held while checking"
    with Session(store) as s:
        assert audit.verify_chain(s) is None
