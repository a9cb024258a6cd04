"""The CLI a platform engineer configures and scripts with: ``devices add|set`` with the
fast-path fields, ``--json`` on every list/show, ``credentials secret`` for a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import AuditLog, Credential, Device, HostKey
from tests.test_host_keys import fingerprint_of, public_line

runner = CliRunner()
PAMFLOW = [sys.executable, "-m", "pamflow.cli"]


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "250"})


def ok(*args, input=None):
    res = run(*args, input=input)
    assert res.exit_code == 0, res.output
    return res


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def device_of(engine, ref: str) -> Device:
    with Session(engine) as s:
        return s.exec(select(Device).where((Device.name == ref) | (Device.address == ref))).one()


def audit_rows(engine, action: str) -> list[AuditLog]:
    with Session(engine) as s:
        return list(s.exec(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


def test_devices_add_with_its_admin_and_reconcile_accounts_port_sudo_and_maintenance(store):
    key = public_line()
    res = ok("devices", "add", "10.70.0.1", "--name", "web1", "--admin-username", "pamadmin",
             "--reconcile-username", "pamrecon", "--change-port", "2222", "--sudo", "password",
             "--maintenance", "--host-key", key, input="Admin-Secret-1\nRecon-Secret-1\n")
    assert "Admin-Secret-1" not in res.output and "Recon-Secret-1" not in res.output
    assert "admin account pamadmin: credential" in res.output
    assert "reconcile account pamrecon: credential" in res.output
    assert f"host key pinned: port 2222 ssh-ed25519 {fingerprint_of(key)}" in res.output
    dev = device_of(store, "web1")
    with Session(store) as s:
        creds = {c.username: c for c in s.exec(select(Credential).where(Credential.device_id == dev.id))}
    assert dev.admin_credential_id == creds["pamadmin"].id
    assert dev.reconcile_credential_id == creds["pamrecon"].id
    assert (dev.settings, dev.maintenance_mode) == ({"port": 2222, "sudo": "password"}, True)
    assert [a.entity for a in audit_rows(store, "create")] == ["device", "credential", "credential"]

    # the same account for both roles: one secret
    ok("devices", "add", "10.70.0.2", "--admin-username", "root", "--reconcile-username", "root",
       input="Root-Secret-2\n")
    dev2 = device_of(store, "10.70.0.2")
    assert dev2.admin_credential_id == dev2.reconcile_credential_id is not None

    # refused before anything is written: no secret for the second account, bad sudo mode
    res = run("devices", "add", "10.70.0.3", "--admin-username", "a", "--reconcile-username", "b",
              input="only-one\n")
    assert res.exit_code == 1 and "no secret given for b" in res.output
    res = run("devices", "add", "10.70.0.3", "--sudo", "always", "--admin-username", "a",
              input="x\n")
    assert res.exit_code == 1 and "sudo 'always' is not one of nopasswd, password, none" in res.output
    res = run("devices", "add", "10.70.0.3", "--platform", "windows", "--sudo", "password")
    assert res.exit_code == 1 and "sudo applies to devices changed over SSH" in res.output
    with Session(store) as s:
        assert s.exec(select(Device).where(Device.address == "10.70.0.3")).first() is None


def test_devices_set_points_at_existing_accounts_and_changes_settings(store):
    ok("devices", "add", "10.71.0.1", "--name", "db1")
    ok("credentials", "add", "db1", "root", input="Root-Secret-1\n")
    ok("credentials", "add", "db1", "oracle", input="Oracle-Secret-1\n")
    before = device_of(store, "db1")

    res = run("devices", "set", "db1", "--admin-username", "ghost")
    assert res.exit_code == 1
    assert "admin_username: no account 'ghost' on device db1 (10.71.0.1); add it first" in res.output
    assert device_of(store, "db1").updated_at == before.updated_at

    key = public_line()
    res = ok("devices", "set", "db1", "--admin-username", "root", "--reconcile-username", "oracle",
             "--change-port", "2200", "--sudo", "none", "--host-key", key, "--maintenance")
    assert "admin_username: — -> root" in res.output and "change_port: — -> 2200" in res.output
    dev = device_of(store, "db1")
    with Session(store) as s:
        ids = {c.username: c.id for c in s.exec(select(Credential))}
        [hk] = s.exec(select(HostKey).where(HostKey.device_id == dev.id)).all()
    assert (dev.admin_credential_id, dev.reconcile_credential_id) == (ids["root"], ids["oracle"])
    assert (dev.settings, dev.maintenance_mode) == ({"port": 2200, "sudo": "none"}, True)
    assert dev.updated_at > before.updated_at  # clears a credential's attention flag too
    assert hk.port == 2200 and hk.fingerprint == fingerprint_of(key)
    [update] = audit_rows(store, "update")
    assert update.entity_id == str(dev.id)
    assert update.detail["admin_username"] == {"from": None, "to": "root"}
    assert update.detail["sudo"] == {"from": None, "to": "none"}

    res = ok("devices", "set", "db1", "--admin-username", "root")  # the same again
    assert "nothing changed" in res.output and len(audit_rows(store, "update")) == 1

    res = ok("devices", "set", "db1", "--unset", "sudo", "--unset", "reconcile_username",
             "--no-maintenance")
    dev = device_of(store, "db1")
    assert (dev.settings, dev.reconcile_credential_id, dev.maintenance_mode) == (
        {"port": 2200}, None, False)

    for args, code, reason in (
            (("--sudo", "sometimes"), 1, "sudo 'sometimes' is not one of"),
            (("--change-port", "70000"), 2, "less than or equal to 65535"),
            (("--unset", "name"), 2, "--unset 'name': one of admin_username"),
            (("--sudo", "none", "--unset", "sudo"), 2, "sudo is both given and unset"),
            ((), 2, "nothing to change")):
        res = run("devices", "set", "db1", *args)
        flat = "".join(res.output.replace("│", "").split())
        assert res.exit_code == code and "".join(reason.split()) in flat, (args, res.output)
        assert "Traceback" not in res.output


def test_every_list_and_show_speaks_json_lines_without_secrets(store):
    key = public_line()
    ok("devices", "add", "10.72.0.1", "--name", "app1", "--admin-username", "pamadmin",
       "--sudo", "nopasswd", "--host-key", key, input="Json-Admin-Secret\n")
    ok("credentials", "add", "app1", "svc", "--kind", "service", input="Json-Svc-Secret\n")
    ok("devices", "add", "10.72.0.2", "--name", "app2")
    outputs = []

    res = ok("devices", "list", "--json")
    outputs.append(res.output)
    devices = json_lines(res.output)
    assert [d["name"] for d in devices] == ["app1", "app2"]
    assert set(devices[0]) == set(devices[1])  # stable keys
    assert devices[0]["admin_username"] == "pamadmin" and devices[0]["sudo"] == "nopasswd"
    assert devices[0]["credential_count"] == 2 and devices[1]["admin_username"] is None
    datetime.fromisoformat(devices[0]["created_at"])  # ISO 8601
    assert devices[0]["created_at"].endswith("+00:00")

    res = ok("devices", "show", "app1", "--json")
    outputs.append(res.output)
    [shown] = json_lines(res.output)
    assert {c["username"]: c["roles"] for c in shown["credentials"]} == {"pamadmin": ["admin"],
                                                                        "svc": []}
    assert [k["fingerprint"] for k in shown["host_keys"]] == [fingerprint_of(key)]
    assert shown["host_keys"][0]["pinned_by"].startswith("cli")

    res = ok("credentials", "list", "--json")
    outputs.append(res.output)
    creds = json_lines(res.output)
    assert [(c["username"], c["device"], c["kind"]) for c in creds] == [
        ("pamadmin", "app1", "local"), ("svc", "app1", "service")]
    assert all(set(c) == set(creds[0]) for c in creds)

    res = ok("credentials", "show", "app1", "svc", "--json")
    outputs.append(res.output)
    [one] = json_lines(res.output)
    assert one["id"] == creds[1]["id"] and one["has_secret"] is True

    res = ok("devices", "host-keys", "app1", "--json")
    outputs.append(res.output)
    assert json_lines(res.output)[0]["key"] == " ".join(key.split()[:2])

    res = run("credentials", "show", "app1", "svc", "--json", "--show-secret")
    assert res.exit_code == 2 and "pamflow credentials secret" in res.output
    text = "".join(outputs)
    assert "Json-Admin-Secret" not in text and "Json-Svc-Secret" not in text
    assert "v1." not in text  # no ciphertext either


SECRET = " lead\ting \x1b[0m quote' \"dbl\" é trailing "


def test_credentials_secret_prints_exactly_the_secret_for_a_pipe(store, tmp_path):
    ok("devices", "add", "10.73.0.1", "--name", "pipe1")
    ok("credentials", "add", "pipe1", "app", input=SECRET + "\n")
    with Session(store) as s:
        cred = s.exec(select(Credential)).one()

    env = {**os.environ, "PAMFLOW_DATABASE_URL": str(store.url)}
    res = subprocess.run([*PAMFLOW, "credentials", "secret", str(cred.id)], env=env,
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (SECRET + "\n").encode() and res.stderr == b""
    res = subprocess.run([*PAMFLOW, "credentials", "secret", "pipe1", "app", "--no-newline"],
                         env=env, capture_output=True, timeout=120)
    assert res.stdout == SECRET.encode()
    viewed = audit_rows(store, "secret_viewed")
    assert [v.detail["via"] for v in viewed] == ["credentials secret", "credentials secret"]
    assert all(v.entity_id == str(cred.id) and "lead" not in json.dumps(v.detail) for v in viewed)

    # never onto a terminal unless asked: nothing printed, nothing audited
    primary, secondary = os.openpty()
    try:
        res = subprocess.run([*PAMFLOW, "credentials", "secret", str(cred.id)], env=env,
                             stdout=secondary, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(secondary)
        os.close(primary)
    assert res.returncode == 2 and b"refusing to print a secret on a terminal" in res.stderr
    assert len(audit_rows(store, "secret_viewed")) == 2


def test_credentials_secret_fails_in_one_line(store):
    ok("devices", "add", "10.74.0.1", "--name", "bad1")
    ok("credentials", "add", "bad1", "one", input="One-Secret\n")
    ok("credentials", "add", "bad1", "two", input="Two-Secret\n")
    ok("devices", "add", "10.74.0.2", "--name", "bare")
    with Session(store, expire_on_commit=False) as s:
        one, two = s.exec(select(Credential).order_by(Credential.id)).all()
        two.secret = one.secret  # sealed for another row: does not open for this one
        s.add(two)
        s.commit()
    for args, reason in (((str(two.id),), f"cannot decrypt the secret of two@10.74.0.1 "
                                          f"(credential {two.id})"),
                         (("999",), "no credential with id 999"),
                         (("bad1", "nobody"), "no credential 'nobody' on bad1")):
        res = run("credentials", "secret", *args)
        assert res.exit_code == 1 and reason in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert "One-Secret" not in res.output
    assert audit_rows(store, "secret_viewed") == []


def test_help_names_the_new_commands(store):
    for group, commands in (("devices", ("add", "set", "list", "show", "pin-host-key", "host-keys")),
                            ("credentials", ("add", "list", "show", "secret"))):
        res = ok(group, "--help")
        assert all(c in res.output for c in commands)
    assert "--admin-username" in ok("devices", "add", "--help").output


def test_credentials_rotate_queues_a_change_ahead_of_scheduled_work(store, monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    ok("devices", "add", "10.75.0.1", "--name", "rot1")
    ok("credentials", "add", "rot1", "app", input="Rotate-Secret-1\n")
    res = ok("credentials", "rotate", "rot1", "app")
    assert "change of app on rot1 (credential 1) queued: operation 1" in res.output
    res = ok("credentials", "rotate", "1")
    assert "joined the change already queued: operation 1" in res.output
    from pamflow.models import Operation

    with Session(store) as s:
        [op] = s.exec(select(Operation)).all()
    assert (op.kind, op.credential_id, op.priority, op.state) == ("change", 1, 10, "queued")
    assert op.requested_by.startswith("cli")
    res = run("credentials", "rotate", "rot1", "nobody")
    assert res.exit_code == 1 and "no credential 'nobody' on rot1" in res.output
