"""``pamflow devices|credentials|import``: through typer's CliRunner and as a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from pamflow import db
from pamflow.cli import app
from pamflow.models import AuditLog, Credential, Device
from pamflow.vault import credential_aad, vault

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "200"})


def flat(text: str) -> str:
    """The output without whitespace (rich wraps long values)."""
    return "".join(text.split())


def write_csv(path, rows):
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["name", "address", "platform", "ports", "username", "password", "kind"])
        out.writerows(rows)
    return path


def test_devices_add_list_show(store):
    res = run("devices", "add", "10.20.0.1", "--name", "db1", "--ports", "22;5432", "--site", "lab")
    assert res.exit_code == 0, res.output
    assert "device 1 added: db1 (10.20.0.1, linux, ports 22,5432" in res.output
    res = run("devices", "add", "web.example.com", "--platform", "windows", "--tenant", "acme")
    assert res.exit_code == 0, res.output
    with db.session(store) as s:
        dev = s.exec(select(Device).where(Device.address == "web.example.com")).one()
        assert (dev.platform, dev.ports, dev.tenant, dev.source) == ("windows", [5986], "acme", "manual")
        assert s.exec(select(AuditLog).where(AuditLog.entity == "device")).all()

    res = run("devices", "add", "10.20.0.1")
    assert res.exit_code == 1 and "already exists" in res.output
    res = run("devices", "add", "300.1.1.1")
    assert res.exit_code == 1 and "not an IP address or host name" in res.output
    res = run("devices", "add", "10.20.0.9", "--ports", "22;http")
    assert res.exit_code == 1 and "'http' is not a port number" in res.output

    res = run("devices", "list")
    assert res.exit_code == 0, res.output
    assert "db1" in res.output and "web.example.com" in res.output and "Devices (2 of 2)" in res.output
    res = run("devices", "list", "--tenant", "acme")
    assert "db1" not in res.output and "web.example.com" in res.output

    res = run("devices", "show", "db1")
    assert res.exit_code == 0 and "10.20.0.1" in res.output and "22,5432" in res.output
    res = run("devices", "show", "10.20.0.1")
    assert res.exit_code == 0 and "db1" in res.output
    res = run("devices", "show", "nope")
    assert res.exit_code == 1 and "no device 'nope'" in res.output


def test_credentials_add_list_show_hides_the_secret(store):
    assert run("devices", "add", "10.30.0.1", "--name", "app1").exit_code == 0
    res = run("credentials", "add", "app1", "oracle", "--kind", "service",
              "--change-interval-days", "30", input="Sup3r-S3cret!\n")
    assert res.exit_code == 0, res.output
    assert "Sup3r-S3cret!" not in res.output
    with db.session(store) as s:
        cred = s.exec(select(Credential)).one()
        assert vault().decrypt(cred.secret, credential_aad(cred.id, cred.device_id, "secret")) == \
            "Sup3r-S3cret!"
        assert (cred.kind, cred.change_interval_days, cred.secret_version) == ("service", 30, 1)

    # never from the command line
    res = run("credentials", "add", "app1", "other", "--secret", "on-the-command-line")
    assert res.exit_code == 2
    res = run("credentials", "add", "app1", "oracle", input="again\n")
    assert res.exit_code == 1 and "already exists" in res.output
    res = run("credentials", "add", "app1", "empty", input="\n")
    assert res.exit_code == 1 and "no secret given" in res.output
    res = run("credentials", "add", "app1", "gen", "--generate")
    assert res.exit_code == 0, res.output

    res = run("credentials", "list")
    assert res.exit_code == 0 and "oracle" in res.output and "gen" in res.output
    assert "Sup3r-S3cret!" not in res.output

    res = run("credentials", "show", str(cred.id))
    assert res.exit_code == 0, res.output
    assert "Sup3r-S3cret!" not in res.output and "********" in res.output and "oracle" in res.output
    res = run("credentials", "show", "app1", "oracle")
    assert res.exit_code == 0 and "Sup3r-S3cret!" not in res.output
    with db.session(store) as s:
        assert not s.exec(select(AuditLog).where(AuditLog.action == "secret_viewed")).all()

    res = run("credentials", "show", "app1", "oracle", "--show-secret")
    assert res.exit_code == 0 and "Sup3r-S3cret!" in res.output
    with db.session(store) as s:
        viewed = s.exec(select(AuditLog).where(AuditLog.action == "secret_viewed")).one()
        assert viewed.entity_id == str(cred.id) and "Sup3r" not in repr(viewed.detail)
    res = run("credentials", "show", "app1", "nobody")
    assert res.exit_code == 1 and "no credential 'nobody'" in res.output


def test_import_without_prefect(store, tmp_path, monkeypatch):
    monkeypatch.setenv("PAMFLOW_UPLOAD_DIR", str(tmp_path))
    path = write_csv(tmp_path / "in.csv", [
        ["h1", "10.40.0.1", "linux", "22", "root", "Imp-Secret-1", "local"],
        ["h2", "10.40.0.2", "linux", "22", "root", "Imp-Secret-2", "robot"],
        ["h3", "not a host", "linux", "22", "root", "Imp-Secret-3", "local"],
    ])
    res = run("import", str(path))
    assert res.exit_code == 0, res.output
    assert "2 rows rejected" in res.output
    assert "import-errors/" in flat(res.output) and "-in.errors.csv" in flat(res.output)
    assert "Imp-Secret" not in res.output
    assert run("import", str(path), "--strict").exit_code == 1
    with db.session(store) as s:
        assert [d.address for d in s.exec(select(Device))] == ["10.40.0.1"]

    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\x00\xff\xfe garbage")
    res = run("import", str(junk))
    assert res.exit_code == 2 and "cannot import" in res.output and "binary data" in res.output
    res = run("import", str(tmp_path / "missing.xlsx"))
    assert res.exit_code == 2 and "no such file" in res.output

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    res = run("import", str(empty))
    assert res.exit_code == 0 and "no data rows" in res.output


def test_import_from_the_command_line_and_a_file_error_in_one_line(store, tmp_path):
    """``pamflow import`` as a user runs it: a subprocess importing in-process; a file that
    cannot be read is one line and exit code 2, never a traceback."""
    path = write_csv(tmp_path / "cli.csv", [
        ["h1", "10.50.0.1", "linux", "22", "root", "Cli-Secret-1", "local"],
        ["h2", "10.50.0.2", "solaris", "22", "root", "Cli-Secret-2", "local"],
    ])
    env = {**os.environ, "COLUMNS": "200", "PAMFLOW_UPLOAD_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "pamflow.cli", "import", str(path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rows rejected" in res.stdout and "Cli-Secret" not in res.stdout + res.stderr
    with db.session(store) as s:
        assert [d.address for d in s.exec(select(Device))] == ["10.50.0.1"]

    junk = tmp_path / "junk.xlsx"
    junk.write_text("not a workbook")
    res = subprocess.run([sys.executable, "-m", "pamflow.cli", "import", str(junk)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    out = (res.stdout + res.stderr).strip()
    assert out.startswith("cannot import: junk.xlsx: not an XLSX workbook"), out
    assert len(out.splitlines()) == 1 and "Traceback" not in out


@pytest.mark.parametrize("args", [["devices"], ["credentials"]])
def test_groups_show_their_help(args, store):
    res = run(*args)
    assert "add" in res.output and "list" in res.output and "show" in res.output
