"""Backup export over SFTP to the real sshd: host key pinned, resumable after the connection
is cut mid-upload, verified by size and sha256 on the remote side; the SSH password is a
credential in pamflow's vault; and the robot run for real with its Backup target block."""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pamflow.backup import ExportError, HostKeyRefused
from pamflow.backup import files as bfiles
from pamflow.backup.export import SftpTarget, export_backup, vaulted_secret
from pamflow.models import AuditLog, Credential, Device
from pamflow.vault import credential_aad, vault
from tests.peers.proxy import CuttableProxy

SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture
def backup_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PAMFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    return bfiles.backup_dir()


@pytest.fixture
def account(sshd):
    """A real account on the sshd and a remote directory only it may write."""
    password = f"Exp-{secrets.token_urlsafe(12)}'\"$;"
    name = sshd.add_account(password)
    remote = Path(tempfile.mkdtemp(prefix="pamflow-remote-"))
    user = pwd.getpwnam(name)
    os.chown(remote, user.pw_uid, user.pw_gid)
    remote.chmod(0o700)
    yield name, password, remote
    subprocess.run(["rm", "-rf", str(remote)], check=False)


def a_backup(backup_dir: Path, size: int = SIZE) -> Path:
    path = backup_dir / bfiles.new_name("credentials")
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    return path


def target(sshd, account, port: int | None = None, **kw) -> SftpTarget:
    name, password, remote = account
    values = {"host": "127.0.0.1", "port": port or sshd.port, "username": name,
              "remote_dir": str(remote), "host_key": sshd.host_key_pub, "secret": password,
              "timeout": 10.0, **kw}
    return SftpTarget(**values)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_verified_on_the_remote_side(backup_dir, sshd, account):
    path = a_backup(backup_dir)
    result = export_backup(path.name, target(sshd, account))
    remote = account[2] / path.name
    assert result.verified_by == "sha256sum" and result.sha256 == sha(path) == sha(remote)
    assert result.size == SIZE == remote.stat().st_size and result.resumed_from == 0
    assert remote.stat().st_mode & 0o777 == 0o600
    assert not (account[2] / f"{path.name}.part").exists()
    assert list((backup_dir / "upload").iterdir()) == []  # the snapshot link is gone
    again = export_backup(path.name, target(sshd, account))
    assert again.already_there and again.sent == 0


def test_upload_cut_midway_resumes_from_the_remote_part(backup_dir, sshd, account):
    path = a_backup(backup_dir)
    proxy = CuttableProxy(sshd.port)
    try:
        part = account[2] / f"{path.name}.part"

        def cut_at_a_third(sent: int, size: int) -> None:
            """Once a third is sent and the server has written some of it, drop the link."""
            if sent >= size // 3 and proxy.cuts == 0:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (
                        not part.exists() or part.stat().st_size < 256 * 1024):
                    time.sleep(0.05)
                proxy.cut()

        with pytest.raises(ExportError, match="broke after .* the next run resumes|failed"):
            export_backup(path.name, target(sshd, account, port=proxy.port),
                          on_progress=cut_at_a_third)
        assert part.exists() and 0 < part.stat().st_size < SIZE
        assert (backup_dir / "upload" / path.name).exists()  # the snapshot waits for the retry
        result = export_backup(path.name, target(sshd, account, port=proxy.port))
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert result.resumed_from > 0 and result.sent == SIZE - result.resumed_from
    assert sha(account[2] / path.name) == sha(path) == result.sha256
    assert not part.exists()


def test_a_part_of_another_file_is_started_over(backup_dir, sshd, account):
    path = a_backup(backup_dir, 500_000)
    part = account[2] / f"{path.name}.part"
    part.write_bytes(os.urandom(200_000))
    user = pwd.getpwnam(account[0])
    os.chown(part, user.pw_uid, user.pw_gid)
    result = export_backup(path.name, target(sshd, account))
    assert result.resumed_from == 0 and result.sent == 500_000
    assert sha(account[2] / path.name) == sha(path)


def test_another_host_key_is_refused_before_anything_is_sent(backup_dir, sshd, account, tmp_path):
    path = a_backup(backup_dir, 1000)
    keyfile = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keyfile)], check=True)
    other = (tmp_path / "other.pub").read_text().strip()
    with pytest.raises(HostKeyRefused, match="not the pinned ssh-ed25519 .* nothing was sent"):
        export_backup(path.name, target(sshd, account, host_key=other))
    keyfile = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(keyfile)],
                   check=True)
    with pytest.raises(HostKeyRefused, match="does not offer the pinned ssh-rsa|not the pinned"):
        export_backup(path.name, target(sshd, account,
                                        host_key=(tmp_path / "rsa.pub").read_text()))
    for bad in ("", "ssh-ed25519 AAAA", "@cert-authority * ssh-ed25519 AAAA"):
        with pytest.raises(HostKeyRefused, match="no usable pinned host key"):
            export_backup(path.name, target(sshd, account, host_key=bad))
    assert list(account[2].iterdir()) == []
    assert f"password for {account[0]}" not in sshd.log  # the password was never offered


def test_without_a_shell_the_remote_hash_is_read_back_over_sftp(backup_dir, sshd, tmp_path):
    """An sftp-only account (no shell: sha256sum cannot run) is verified by re-reading."""
    password = f"Nsh-{secrets.token_urlsafe(12)}"
    name = f"pfn{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-d", "/tmp", name],
                   check=True)
    sshd.accounts.append(name)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
    remote = Path(tempfile.mkdtemp(prefix="pamflow-remote-"))
    user = pwd.getpwnam(name)
    os.chown(remote, user.pw_uid, user.pw_gid)
    try:
        path = a_backup(backup_dir, 300_000)
        result = export_backup(path.name, target(sshd, (name, password, remote)))
        assert result.verified_by == "sftp re-read"
        assert sha(remote / path.name) == sha(path) == result.sha256
    finally:
        subprocess.run(["rm", "-rf", str(remote)], check=False)


def test_wrong_password_and_hostile_settings_are_refused(backup_dir, sshd, account):
    path = a_backup(backup_dir, 1000)
    with pytest.raises(ExportError, match="refused the vaulted password") as err:
        export_backup(path.name, target(sshd, account, secret="not-the-password"))
    assert "not-the-password" not in str(err.value)
    for remote in ("relative/dir", "/tmp/../etc", "/tmp/x\nrm -rf /", "/tmp/\0x"):
        with pytest.raises(ExportError, match="must be an absolute path"):
            target(sshd, account, remote_dir=remote)
    with pytest.raises(ExportError, match="does not exist"):
        export_backup(path.name, target(sshd, account, remote_dir="/nonexistent-pamflow"))
    for ref in ("../x.pfbk", "/etc/passwd", path.name + ".part"):
        with pytest.raises(Exception, match="not a backup file name|not in the backup directory"):
            export_backup(ref, target(sshd, account))
    with pytest.raises(ExportError, match="cannot connect"):
        export_backup(path.name, target(sshd, account, port=1))


def test_backup_export_robot_with_its_block(store, backup_dir, sshd, account, prefect_server):
    from blocks.backup_target import BackupTargetBlock
    from flows.backup import backup_export
    from tests.test_credential_robots import _artifacts

    name, password, remote = account
    with Session(store, expire_on_commit=False) as s:
        dev = Device(name="backup-store", address="127.0.0.1", ports=[sshd.port])
        s.add(dev)
        s.flush()
        cred = Credential(device_id=dev.id, username=name, auto_change=False)
        s.add(cred)
        s.flush()
        cred.secret = vault().encrypt(password, credential_aad(cred.id, dev.id, "secret"))
        s.commit()
    assert vaulted_secret(store, cred.id, vault()) == password
    block_name = f"bt-{secrets.token_hex(3)}"
    BackupTargetBlock(host="127.0.0.1", port=sshd.port, username=name, remote_dir=str(remote),
                      host_key=sshd.host_key_pub, credential_id=cred.id).save(block_name)
    first = a_backup(backup_dir, 100_000)
    newest = a_backup(backup_dir, 200_000)
    secrets_backup = backup_dir / bfiles.new_name("secrets")
    secrets_backup.write_bytes(b"s" * 5000)
    rows = backup_export(target_block=block_name)
    assert [r["file"] for r in rows] == [newest.name, secrets_backup.name]
    assert sha(remote / newest.name) == sha(newest) and not (remote / first.name).exists()
    with Session(store) as s:
        audit = list(s.exec(select(AuditLog).where(AuditLog.action == "backup.exported")))
        assert len(audit) == 2 and password not in str([a.detail for a in audit])
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        text = _artifacts(client, ["backup-export"])
    assert newest.name in text and sha(newest) in text and password not in text


def test_a_vaulted_private_key_is_used_and_a_refused_key_said_so(backup_dir, sshd, account,
                                                                 tmp_path):
    from pamflow.backup.export import _load_private_key

    keyfile = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keyfile)], check=True)
    private = keyfile.read_text()
    assert _load_private_key(private).get_name() == "ssh-ed25519"
    assert _load_private_key("a password") is None
    with pytest.raises(ExportError, match="cannot be read"):
        _load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    path = a_backup(backup_dir, 1000)
    with pytest.raises(ExportError, match="refused the vaulted key") as err:
        export_backup(path.name, target(sshd, account, secret=private))
    assert "PRIVATE KEY" not in str(err.value)


def test_backup_target_block_refuses_bad_settings():
    from pydantic import ValidationError

    from blocks.backup_target import BackupTargetBlock

    good = {"host": "h", "username": "u", "remote_dir": "/srv/backups",
            "host_key": "ssh-ed25519 AAAA", "credential_id": 1}
    for bad in ({"port": 0}, {"port": 70000}, {"credential_id": 0}, {"timeout": 0}):
        with pytest.raises(ValidationError):
            BackupTargetBlock(**{**good, **bad})
    block = BackupTargetBlock(**{**good, "remote_dir": "../../etc"})
    with pytest.raises(ExportError, match="absolute path"):
        block.to_target("pw")
    assert "pw" not in repr(BackupTargetBlock(**good).to_target("pw"))
