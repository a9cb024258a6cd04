"""The README's "Configure a device for fast rotation", run as written against the real sshd:
a device with its admin account, a typical export imported (hostname + ip columns),
a rotation, a reservation, and a script reading the secret to log in.

Only the lines marked ``# (your values)`` are replaced (by this sshd's address, port, host
key and fresh accounts); the CSV is written with the README's own header.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pamflow.models import AuditLog, Credential, Device, HostKey, PasswordReservation
from tests.test_rotation import nasty, opened, ssh_login

pytestmark = pytest.mark.usefixtures("needs_sshd")

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> tuple[str, list[str]]:
    """(the shell block without its "your values" lines, the CSV block's header)."""
    text = README.read_text()
    section = text.split("### Configure a device for fast rotation", 1)[1]
    header = section.split("```csv\n", 1)[1].splitlines()[0].split(",")
    block = section.split("<!-- fast-rotation -->", 1)[1].split("<!-- /fast-rotation -->", 1)[0]
    code = block.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in code.splitlines() if not line.rstrip().endswith("# (your values)")]
    return "\n".join(lines), header


def test_the_readme_configures_imports_rotates_reserves_and_reads_a_secret(store, sshd, tmp_path):
    script, header = readme_example()
    assert "pamflow devices add" in script and "credentials secret" in script
    assert {"hostname", "ip"} <= set(header)  # the export the issue describes
    admin_pw, app_pw = nasty("readme-admin"), nasty("readme-app")
    admin = sshd.add_account(admin_pw, sudo_chpasswd=True)
    app = sshd.add_account(app_pw)

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "admin-password.txt").write_text(admin_pw + "\n")
    values = {"hostname": "web1", "ip": "127.0.0.1", "ssh_port": str(sshd.port), "username": app,
              "password": app_pw, "admin_username": admin}
    with (work / "accounts.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerow([values[h] for h in header])

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home), "COLUMNS": "200", "PAMFLOW_UPLOAD_DIR": str(tmp_path / "uploads"),
        "PAMFLOW_EMIT_EVENTS": "0", "PAMFLOW_TARGET_TIMEOUT": "10",
        "host": "127.0.0.1", "port": str(sshd.port), "admin": admin, "app": app,
        "host_key": sshd.host_key_pub,
    })
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"({app})" in res.stdout  # `id` ran on the server, logged in with the secret read
    assert admin_pw not in res.stdout + res.stderr and app_pw not in res.stdout + res.stderr

    with Session(store) as s:
        dev = s.exec(select(Device)).one()
        creds = {c.username: c for c in s.exec(select(Credential))}
        [key] = s.exec(select(HostKey)).all()
        [reservation] = s.exec(select(PasswordReservation)).all()
        viewed = s.exec(select(AuditLog).where(AuditLog.action == "secret_viewed")).all()
    assert (dev.name, dev.admin_credential_id, dev.settings) == (
        "web1", creds[admin].id, {"port": sshd.port, "sudo": "nopasswd"})
    assert key.port == sshd.port and key.key_base64 == sshd.host_key_pub.split()[1]
    # imported, rotated, then changed again when the reservation started
    assert creds[app].secret_version == 3 and creds[app].status == "ok"
    assert (reservation.requested_by, reservation.state) == ("alice", "active")
    now = opened(creds[app])
    assert now not in res.stdout  # the script used it, nobody printed it
    assert ssh_login(sshd.port, app, now) and not ssh_login(sshd.port, app, app_pw)
    assert [v.detail["via"] for v in viewed] == ["credentials secret"]
