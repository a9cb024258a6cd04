"""``pamflow alerts certificates|changes``: tables and --json, bad options exit 2 with one
line (no traceback)."""

from __future__ import annotations

import json
from datetime import timedelta

from typer.testing import CliRunner

from pamflow.alerts.certificates import alert_expiring_certificates
from pamflow.alerts.config_audit import audit_configuration, robot_config
from pamflow.cli import app
from pamflow.db import session
from pamflow.models import Certificate, utcnow

runner = CliRunner()


def _dep(limit: int) -> dict:
    return {"id": "d1", "name": "connectivity-test", "paused": False, "schedules": [],
            "global_concurrency_limit": {"limit": limit}}


def test_certificates_and_changes_as_json_and_table(store):
    with session(store) as s:
        s.add(Certificate(common_name="api.example", not_after=utcnow() + timedelta(days=6),
                          issuer="CN=Corp CA"))
        s.add(Certificate(common_name="far.example", not_after=utcnow() + timedelta(days=400)))
        s.commit()
    alert_expiring_certificates(store)
    out = runner.invoke(app, ["alerts", "certificates", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [(r["common_name"], r["days_left"], r["alerts_sent"]) for r in rows] == [
        ("api.example", 6, [7])]
    table = runner.invoke(app, ["alerts", "certificates", "--within", "1000"])
    assert table.exit_code == 0 and "within 1000 days (2)" in table.output

    audit_configuration(store, [robot_config(_dep(1), "connectivity-test")])
    audit_configuration(store, [robot_config(_dep(5), "connectivity-test")])
    out = runner.invoke(app, ["alerts", "changes", "--json", "--pending"])
    assert out.exit_code == 0, out.output
    change = json.loads(out.output.splitlines()[0])
    assert (change["robot"], change["field"], change["before"], change["after"],
            change["syslog"]) == ("connectivity-test", "concurrency_limit", "1", "5", "pending")
    table = runner.invoke(app, ["alerts", "changes", "--robot", "connectivity-test"])
    assert table.exit_code == 0 and "changes (1, newest first)" in table.output


def test_bad_options_are_one_line_and_exit_2(store):
    for args in (["alerts", "changes", "--since", "yesterday-ish"],
                 ["alerts", "changes", "--since", "9" * 5000],
                 ["alerts", "certificates", "--within", "-1"],
                 ["alerts", "certificates", "--within", "x" * 10000],
                 ["alerts", "changes", "--robot", "a\x00b'; DROP TABLE config_change; --"]):
        out = runner.invoke(app, args)
        assert "Traceback" not in out.output
        if args[-1].startswith("a\x00"):
            assert out.exit_code in (0, 2)  # no such robot: an empty table, or refused
        else:
            assert out.exit_code == 2, (args, out.output)
    assert runner.invoke(app, ["alerts", "changes", "--json"]).exit_code == 0
