"""Credentials backup, Secrets backup and backup delete: the sealed round trip on SQLite and
PostgreSQL (every secret decrypts to the same value under the target store's own vault,
bound to its row), hostile files refused with nothing written, custodian shares, the CLI,
and the robots run for real on the session's Prefect server."""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow import db
from pamflow.backup import (
    BackupError,
    BackupKey,
    BackupKeyError,
    BackupRefused,
    RestoreRefused,
    create_backup,
    list_backups,
    restore_backup,
    verify_backup,
)
from pamflow.backup import files as bfiles
from pamflow.backup.cleanup import delete_backups
from pamflow.backup.sealed import MAGIC
from pamflow.cli import app
from pamflow.models import (
    AuditLog,
    Credential,
    CredentialHistory,
    Device,
    HostKey,
    Notification,
    WebhookSource,
)
from pamflow.vault import Keyring, Vault, credential_aad, vault, webhook_aad
from tests.fixtures.stores import create_pg_database, drop_pg_database

RESTORED_TABLES = ("device", "host_key", "credential", "credential_history", "webhook_source")


@pytest.fixture
def backup_env(tmp_path, monkeypatch):
    """A backup directory and a backup key (its public key configured as the recipient)."""
    monkeypatch.setenv("PAMFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    key = BackupKey.generate()
    monkeypatch.setenv("PAMFLOW_BACKUP_RECIPIENTS", key.recipient.text())
    return key


def other_vault() -> Vault:
    """A vault with a master key of its own (the target store of a restore on another host)."""
    return Vault(Keyring.from_env_value(base64.b64encode(secrets.token_bytes(32)).decode()))


def nasty(tag: str) -> str:
    return f"{tag}-'\"$(id)`;\\ ünï {secrets.token_hex(4)}"


def populate(engine, box: Vault, devices: int = 3, per_device: int = 4, history: int = 3) -> dict:
    """Devices, host keys, credentials (secret, pending, candidate) with history, webhook
    sources; returns {(table, id, field): plaintext} of every secret written."""
    secrets_of: dict = {}
    with Session(engine) as s:
        for d in range(devices):
            dev = Device(name=f"srv{d}", address=f"10.9.0.{d + 1}", ports=[22, 2222],
                         settings={"port": 22}, tenant="t1" if d % 2 else "default")
            s.add(dev)
            s.flush()
            s.add(HostKey(device_id=dev.id, port=22, key_type="ssh-ed25519",
                          key_base64=base64.b64encode(secrets.token_bytes(51)).decode(),
                          fingerprint="SHA256:x"))
            for u in range(per_device):
                cred = Credential(device_id=dev.id, username=f"user{u}", secret_version=history)
                s.add(cred)
                s.flush()
                for fld, column in (("secret", "secret"), ("pending", "pending_secret"),
                                    ("candidate", "candidate_secret")):
                    if fld != "secret" and u % 2:
                        continue
                    text = nasty(f"{fld}{d}{u}")
                    setattr(cred, column, box.encrypt(text, credential_aad(cred.id, dev.id, fld)))
                    secrets_of[("credential", cred.id, column)] = text
                for v in range(history):
                    text = nasty(f"old{d}{u}{v}")
                    h = CredentialHistory(credential_id=cred.id, version=v,
                                          secret=box.encrypt(text, credential_aad(
                                              cred.id, dev.id, "history")))
                    s.add(h)
                    s.flush()
                    secrets_of[("credential_history", h.id, "secret")] = text
        for n in range(2):
            name = f"itsm{n}"
            text, prev = nasty("hook"), nasty("prev")
            s.add(WebhookSource(name=name, secret=box.encrypt(text, webhook_aad(name, "secret")),
                                previous_secret=box.encrypt(prev, webhook_aad(name, "previous")),
                                previous_valid_until=datetime.now(UTC)))
            s.flush()
            wid = s.exec(select(WebhookSource.id).where(WebhookSource.name == name)).one()
            secrets_of[("webhook_source", wid, "secret")] = text
            secrets_of[("webhook_source", wid, "previous_secret")] = prev
        s.commit()
    return secrets_of


def opened(engine, box: Vault) -> dict:
    """Every secret of ``engine``'s store decrypted with ``box``, bound to its row."""
    out: dict = {}
    with Session(engine) as s:
        for c in s.exec(select(Credential)):
            for fld, column in (("secret", "secret"), ("pending", "pending_secret"),
                                ("candidate", "candidate_secret")):
                token = getattr(c, column)
                if token:
                    out[("credential", c.id, column)] = box.decrypt(
                        token, credential_aad(c.id, c.device_id, fld))
        for h in s.exec(select(CredentialHistory)):
            dev = s.get(Credential, h.credential_id).device_id
            out[("credential_history", h.id, "secret")] = box.decrypt(
                h.secret, credential_aad(h.credential_id, dev, "history"))
        for w in s.exec(select(WebhookSource)):
            out[("webhook_source", w.id, "secret")] = box.decrypt(w.secret,
                                                                  webhook_aad(w.name, "secret"))
            if w.previous_secret:
                out[("webhook_source", w.id, "previous_secret")] = box.decrypt(
                    w.previous_secret, webhook_aad(w.name, "previous"))
    return out


def row_counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar()  # noqa: S608
                for t in (*RESTORED_TABLES, "audit_log", "notification")}


def rows_of(engine, table: str) -> list[dict]:
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(
            f"SELECT * FROM {table} ORDER BY id"))]  # noqa: S608
    for r in rows:
        for k in ("secret", "pending_secret", "candidate_secret", "previous_secret"):
            r.pop(k, None)
    return rows


def round_trip(source, target, key: BackupKey) -> None:
    box = vault()
    written = populate(source, box)
    made = {k: create_backup(source, k, box, [key.recipient]) for k in ("credentials", "secrets")}
    for result in made.values():
        path = bfiles.backup_dir() / result.name
        assert path.stat().st_mode & 0o777 == 0o600
        assert not any(v in path.read_bytes().decode("latin-1") for v in written.values())
    assert made["credentials"].counts == {"device": 3, "host_key": 3, "credential": 12,
                                          "credential_history": 36}
    assert made["secrets"].counts == {"webhook_source": 2}

    target_box = other_vault()  # another host's master key: secrets are sealed again
    for result in made.values():
        restored = restore_backup(target, result.name, key, target_box)
        assert restored.restored and restored.sha256 == result.sha256
    assert opened(target, target_box) == written
    for table in RESTORED_TABLES:
        assert rows_of(target, table) == rows_of(source, table), table
    with Session(target) as s:  # ids continue after the restored ones (PostgreSQL sequences)
        dev = Device(name="after-restore", address="10.9.9.9")
        s.add(dev)
        s.commit()
        assert dev.id == 4
        actions = [a.action for a in s.exec(select(AuditLog))]
        assert actions.count("backup.restored") == 2
        assert s.exec(select(Notification).where(
            Notification.type == "Successful recovery attempt")).first()


def test_round_trip_sqlite(store, tmp_path, backup_env):
    target = db.store(f"sqlite:///{tmp_path / 'target.db'}")
    round_trip(store, target, backup_env)


def test_round_trip_postgresql(pg_store, backup_env):
    name = create_pg_database()
    try:
        target = db.store(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        round_trip(pg_store, target, backup_env)
        target.dispose()
    finally:
        db.reset_engines()
        drop_pg_database(name)


def test_restore_refuses_a_store_that_is_not_empty(store, tmp_path, backup_env):
    populate(store, vault(), devices=1, per_device=1, history=1)
    made = create_backup(store, "credentials", vault(), [backup_env.recipient])
    before = row_counts(store)
    with pytest.raises(RestoreRefused, match="device table is not empty"):
        restore_backup(store, made.name, backup_env, vault())
    assert row_counts(store) == before


def test_restore_rolls_back_when_a_late_row_does_not_fit(store, tmp_path, backup_env):
    """A failure after rows were inserted (here a trigger refusing the last history row)
    rolls the whole restore back."""
    populate(store, vault(), devices=2, per_device=2, history=1)
    made = create_backup(store, "credentials", vault(), [backup_env.recipient])
    target = db.store(f"sqlite:///{tmp_path / 'target.db'}")
    with target.begin() as conn:  # a trigger makes the last history row fail on insert
        conn.execute(sa.text("CREATE TRIGGER no_more BEFORE INSERT ON credential_history "
                             "WHEN NEW.id = 4 BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    with pytest.raises(RestoreRefused, match="does not fit the target store.*nothing was written"):
        restore_backup(target, made.name, backup_env, other_vault())
    assert set(row_counts(target).values()) == {0}


# ----------------------------------------------------------------------------- hostile files
@pytest.fixture
def one_backup(store, backup_env):
    populate(store, vault(), devices=2, per_device=3, history=2)
    made = create_backup(store, "credentials", vault(), [backup_env.recipient])
    return bfiles.backup_dir() / made.name


def hostile(path: Path, data: bytes) -> str:
    """``data`` written as another valid-looking backup name beside ``path``."""
    name = bfiles.new_name("credentials")
    target = path.parent / name
    target.write_bytes(data)
    target.chmod(0o600)
    return name


def refused_and_nothing_written(name: str, key: BackupKey, tmp_path, match: str) -> None:
    target = db.store(f"sqlite:///{tmp_path / f'target-{secrets.token_hex(3)}.db'}")
    with pytest.raises(BackupRefused, match=match):
        restore_backup(target, name, key, other_vault())
    assert set(row_counts(target).values()) == {0}


def test_wrong_key_is_refused(one_backup, backup_env, tmp_path):
    refused_and_nothing_written(one_backup.name, BackupKey.generate(), tmp_path,
                                f"wrong key: .* sealed to backup key id\\(s\\) "
                                f"{backup_env.key_id}")


@pytest.mark.parametrize("cut", [0, 5, len(MAGIC) + 3, 120, -1, -17, -200, "half"])
def test_truncated_file_is_refused(one_backup, backup_env, tmp_path, cut):
    data = one_backup.read_bytes()
    end = len(data) // 2 if cut == "half" else cut
    assert isinstance(end, int)
    name = hostile(one_backup, data[:end])
    refused_and_nothing_written(name, backup_env, tmp_path,
                                "truncated|not a pamflow backup|header|fails authentication")


def test_file_ending_after_a_whole_frame_is_refused(one_backup, backup_env, tmp_path):
    """Cut exactly at a frame boundary: every frame left authenticates, the final one is gone."""
    from pamflow.backup.sealed import read_header

    data = one_backup.read_bytes()
    fd = os.open(one_backup, os.O_RDONLY)
    try:
        pos = read_header(fd, len(data), one_backup.name).length
    finally:
        os.close(fd)
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    name = hostile(one_backup, data[:pos + 4 + length])
    refused_and_nothing_written(name, backup_env, tmp_path,
                                "truncated: it ends after frame 1 without its final")


@pytest.mark.parametrize("where", ["header", "frame-length", "frame-body", "tag", "last-byte"])
def test_bit_flipped_file_is_refused(one_backup, backup_env, tmp_path, where):
    data = bytearray(one_backup.read_bytes())
    header_len = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])[0]
    first_frame = len(MAGIC) + 4 + header_len
    header = data[len(MAGIC) + 4:first_frame]
    pos = {"header": len(MAGIC) + 4 + header.index(b'"created_at"') + 20,
           "frame-length": first_frame + 1, "frame-body": first_frame + 40,
           "tag": first_frame + 4 + struct.unpack(">I", data[first_frame:first_frame + 4])[0] - 1,
           "last-byte": len(data) - 1}[where]
    data[pos] ^= 0x04
    name = hostile(one_backup, bytes(data))
    refused_and_nothing_written(name, backup_env, tmp_path,
                                "altered|fails authentication|truncated|out of bounds|header")


def test_header_with_another_kind_is_refused(one_backup, backup_env, tmp_path):
    data = one_backup.read_bytes()
    swapped = data.replace(b'"kind":"credentials"', b'"kind":"secrets"    ', 1)
    assert swapped != data
    name = hostile(one_backup, swapped)
    refused_and_nothing_written(name, backup_env, tmp_path, "data key does not open|altered")


def test_appended_bytes_are_refused(one_backup, backup_env, tmp_path):
    name = hostile(one_backup, one_backup.read_bytes() + b"\0" * 8)
    refused_and_nothing_written(name, backup_env, tmp_path, "follow its final frame|out of bounds")


def test_oversized_frame_and_file_are_refused(one_backup, backup_env, tmp_path, monkeypatch):
    data = one_backup.read_bytes()
    header_len = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])[0]
    first_frame = len(MAGIC) + 4 + header_len
    huge = data[:first_frame] + struct.pack(">I", 0x7FFFFFFF) + data[first_frame + 4:]
    refused_and_nothing_written(hostile(one_backup, huge), backup_env, tmp_path,
                                "frame 0 claims 2147483647 bytes, out of bounds")
    big_header = data[:len(MAGIC)] + struct.pack(">I", 10**9) + data[len(MAGIC) + 4:]
    refused_and_nothing_written(hostile(one_backup, big_header), backup_env, tmp_path,
                                "header length 1000000000 is out of bounds")
    monkeypatch.setenv("PAMFLOW_BACKUP_MAX_BYTES", str(len(data) - 1))
    refused_and_nothing_written(one_backup.name, backup_env, tmp_path, "over the limit")


def test_wrong_version_and_not_a_backup_are_refused(one_backup, backup_env, tmp_path):
    data = one_backup.read_bytes()
    v2 = data.replace(b'"version":1', b'"version":2', 1)
    refused_and_nothing_written(hostile(one_backup, v2), backup_env, tmp_path,
                                "format version 2; this pamflow reads version 1 only")
    refused_and_nothing_written(hostile(one_backup, b"PK\x03\x04" + os.urandom(500)), backup_env,
                                tmp_path, "not a pamflow backup file")
    header = json.dumps({"format": "pamflow-backup", "version": 1, "kind": "credentials",
                         "file_id": "x", "recipients": [{"kid": "y" * 5000}] * 3}).encode()
    nested = MAGIC + struct.pack(">I", 60000) + b"[" * 60000
    for blob in (MAGIC + struct.pack(">I", len(header)) + header, nested,
                 MAGIC + struct.pack(">I", 4) + b"\xff\xfe\x00\x01"):
        refused_and_nothing_written(hostile(one_backup, blob), backup_env, tmp_path,
                                    "wrong key|not valid JSON|not a pamflow backup")


@pytest.mark.parametrize("table,row,match", [
    ("audit_log", {"id": 1}, "cannot hold 'audit_log' rows"),
    ("device", {"id": 1, "name": "x", "address": "y", "evil": 1}, "columns the store does not know"),
    ("device", {"id": "1 OR 1=1", "name": "x"}, "no valid id"),
    ("device", {"id": 1, "name": ["x"], "address": "y"}, "name has a value of the wrong type"),
    ("device", {"id": 1, "name": "x\u0000", "address": "y"}, "wrong type"),
    ("device", {"id": 1, "name": "x", "address": "y", "created_at": "yesterday"}, "not a time"),
    ("device", {"id": 1, "name": "x", "address": "y", "ports": "22"}, "ports has a value"),
    ("device", {"id": 1, "name": None, "address": "y"}, "name is empty but required"),
    ("credential_history", {"id": 1, "credential_id": 9, "version": 1, "secret": "s"},
     "names credential 9, which the backup does not hold"),
])
def test_forged_rows_are_refused(store, backup_env, tmp_path, table, row, match):
    """Anyone holding the public key can seal a file that opens: its rows are still checked
    against the store's tables before anything is written."""
    from pamflow.backup.sealed import SealedWriter

    name = bfiles.new_name("credentials")
    with open(bfiles.backup_dir() / name, "wb") as fh:
        writer = SealedWriter(fh, "credentials", [backup_env.recipient])
        writer.add(table, row)
        writer.close()
    refused_and_nothing_written(name, backup_env, tmp_path, match)


@pytest.mark.parametrize("ref", ["../pamflow.db", "/etc/passwd", "..", ".", "",
                                 "pamflow-credentials-20260101T000000Z-abcdef.pfbk/../../x",
                                 "tmp/pamflow-credentials-20260101T000000Z-abcdef.pfbk",
                                 "pamflow-credentials-20260101T000000Z-abcdef.pfbk\0",
                                 "pamflow-credentials-x.pfbk", "a" * 5000,
                                 "pamflow-credentials-20260101T000000Z-abcdef.pfbk.tmp"])
def test_path_escaping_and_bad_names_are_refused(one_backup, backup_env, tmp_path, ref):
    refused_and_nothing_written(ref, backup_env, tmp_path,
                                "not a backup file name|not in the backup directory|no valid "
                                "backup|no backup")


def test_symlinked_backup_is_refused(one_backup, backup_env, tmp_path):
    outside = tmp_path / "outside.pfbk"
    outside.write_bytes(one_backup.read_bytes())
    link = one_backup.parent / bfiles.new_name("credentials")
    link.symlink_to(outside)
    refused_and_nothing_written(link.name, backup_env, tmp_path, "not a regular file")
    # a path into the backup directory is accepted only with the real directory
    assert verify_backup(str(one_backup), backup_env).records > 0
    refused_and_nothing_written(str(outside), backup_env, tmp_path, "not in the backup directory")


# ----------------------------------------------------------------------------- keys
def test_custodian_shares_rebuild_the_key_and_alone_say_nothing(one_backup, backup_env):
    one, two = backup_env.split()
    assert backup_env.text().split(":", 1)[1] not in one + two
    assert BackupKey.combine(two, one).key_id == backup_env.key_id
    assert verify_backup(one_backup.name, BackupKey.combine(one, two)).records > 0
    other_one, other_two = BackupKey.generate().split()
    with pytest.raises(BackupKeyError, match="different keys"):
        BackupKey.combine(one, other_two)
    with pytest.raises(BackupKeyError, match="both shares given are share 1"):
        BackupKey.combine(one, one)
    typo = two[:-12] + ("A" if two[-12] != "A" else "B") + two[-11:]
    with pytest.raises(BackupKeyError, match="check value|base64"):
        BackupKey.combine(one, typo)
    with pytest.raises(BackupKeyError, match="not a backup key share"):
        BackupKey.combine(one, "pfbk1-share:../../etc")


def test_backup_needs_a_configured_key(store, backup_env, monkeypatch):
    monkeypatch.delenv("PAMFLOW_BACKUP_RECIPIENTS")
    from pamflow.backup import configured_recipients

    with pytest.raises(BackupKeyError, match="no backup key configured"):
        configured_recipients()
    monkeypatch.setenv("PAMFLOW_BACKUP_RECIPIENTS", "pfbk1-pub:AAAA")
    with pytest.raises(BackupKeyError, match="32 bytes"):
        configured_recipients()


def test_undecryptable_secret_fails_the_backup_naming_the_row(store, backup_env):
    populate(store, vault(), devices=1, per_device=1, history=0)
    with store.begin() as conn:
        conn.execute(sa.text("UPDATE credential SET secret = :s"),
                     {"s": other_vault().encrypt("x", credential_aad(1, 1, "secret"))})
    with pytest.raises(BackupError, match="credential.secret of row id 1 cannot be decrypted"):
        create_backup(store, "credentials", vault(), [backup_env.recipient])
    assert list_backups() == []
    assert list((bfiles.backup_dir() / "tmp").iterdir()) == []


# ----------------------------------------------------------------------------- CLI
def test_cli_keygen_split_create_list_restore(store, backup_env, tmp_path, monkeypatch):
    monkeypatch.delenv("PAMFLOW_BACKUP_RECIPIENTS")
    monkeypatch.setenv("PAMFLOW_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    custodians = tmp_path / "custodians"
    custodians.mkdir()
    out = runner.invoke(app, ["backup", "keygen", "--out", str(custodians), "--split", "--json"])
    assert out.exit_code == 0, out.output
    made = json.loads(out.stdout)
    shares = [Path(p) for p in made["files"]]
    assert [p.stat().st_mode & 0o777 for p in shares] == [0o600, 0o600]
    written = populate(store, vault(), devices=1, per_device=2, history=1)
    out = runner.invoke(app, ["backup", "create", "--json"])
    assert out.exit_code == 0, out.output
    backups = [json.loads(line) for line in out.stdout.splitlines()]
    assert {b["kind"] for b in backups} == {"credentials", "secrets"}
    assert all(b["key_ids"] == [made["key_id"]] for b in backups)
    listed = [json.loads(line) for line in runner.invoke(
        app, ["backup", "list", "--json"]).stdout.splitlines()]
    assert {b["file"] for b in listed} == {b["file"] for b in backups}
    assert not any(v in out.stdout for v in written.values())

    target = tmp_path / "target.db"
    monkeypatch.setenv("PAMFLOW_DATABASE_URL", f"sqlite:///{target}")
    db.reset_engines()
    for b in backups:
        args = ["backup", "restore", b["file"], "--share", str(shares[1]), "--share",
                str(shares[0]), "--json"]
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["restored"] is True
    assert opened(db.store(), vault()) == written
    again = runner.invoke(app, ["backup", "restore", backups[0]["file"], "--share",
                                str(shares[0]), "--share", str(shares[1])])
    assert again.exit_code == 2 and "not empty" in again.output
    assert "Traceback" not in again.output


@pytest.mark.parametrize("args,message", [
    (["backup", "restore", "../../etc/passwd", "--key", "KEY"], "not in the backup directory"),
    (["backup", "restore", "x.pfbk"], "needs its private key"),
    (["backup", "restore", "x.pfbk", "--key", "/nonexistent"], "cannot read backup key file"),
    (["backup", "verify", "pamflow-secrets-20260101T000000Z-abcdef.pfbk", "--key", "KEY"],
     "no backup"),
    (["backup", "create", "--kind", "everything"], "not credentials, secrets or all"),
    (["backup", "keygen", "--out", "/nonexistent/dir"], "not an existing directory"),
])
def test_cli_errors_are_one_line_exit_2(store, backup_env, tmp_path, args, message):
    keyfile = tmp_path / "k.key"
    keyfile.write_text(backup_env.text())
    keyfile.chmod(0o600)
    out = CliRunner().invoke(app, [str(keyfile) if a == "KEY" else a for a in args])
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output


def test_cli_refuses_a_readable_key_file(store, backup_env, tmp_path):
    keyfile = tmp_path / "k.key"
    keyfile.write_text(backup_env.text())
    keyfile.chmod(0o644)
    out = CliRunner().invoke(app, ["backup", "verify", "x", "--key", str(keyfile)])
    assert out.exit_code == 2 and "chmod 600" in out.output


# ----------------------------------------------------------------------------- backup delete
def test_backup_delete_keeps_recent_and_never_follows_symlinks(store, backup_env, tmp_path):
    base = bfiles.backup_dir()
    now = datetime.now(UTC)
    names = []
    for days in (90, 60, 40, 35, 10, 1):
        name = bfiles.new_name("credentials", now - timedelta(days=days))
        (base / name).write_bytes(b"x" * days)
        names.append(name)
    secret_name = bfiles.new_name("secrets", now - timedelta(days=400))
    (base / secret_name).write_bytes(b"only one")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tmp, upload = bfiles.sub_dir("tmp"), bfiles.sub_dir("upload")
    old_tmp, new_tmp, old_upload = tmp / "a.pfbk.tmp", tmp / "b.pfbk.tmp", upload / names[0]
    for p in (old_tmp, new_tmp, old_upload):
        p.write_bytes(b"partial")
    day_ago = (now - timedelta(days=2)).timestamp()
    os.utime(old_tmp, (day_ago, day_ago))
    os.utime(old_upload, (day_ago, day_ago))
    (tmp / "escape").symlink_to(outside / "keep.txt")
    os.utime(tmp / "escape", (day_ago, day_ago), follow_symlinks=False)
    (upload / "dir").symlink_to(outside)
    old_link = base / bfiles.new_name("credentials", now - timedelta(days=500))
    old_link.symlink_to(outside / "keep.txt")

    report = delete_backups(retention_days=30, keep_last=2)
    removed = {(r.directory, r.name) for r in report.removed}
    assert removed == {("backups", names[0]), ("backups", names[1]), ("backups", names[2]),
                       ("backups", names[3]), ("tmp", "a.pfbk.tmp"), ("upload", names[0])}
    assert (base / names[4]).exists() and (base / names[5]).exists()
    assert (base / secret_name).exists()  # the newest of its kind is kept whatever its age
    assert new_tmp.exists() and (outside / "keep.txt").read_text() == "keep"
    assert any("escape: symlink" in s for s in report.skipped)
    assert old_link.is_symlink()


def test_cli_delete_dry_run_then_for_real(store, backup_env):
    old = bfiles.backup_dir() / bfiles.new_name("secrets", datetime.now(UTC) - timedelta(days=90))
    old.write_bytes(b"x")
    (bfiles.backup_dir() / bfiles.new_name("secrets")).write_bytes(b"y")
    runner = CliRunner()
    out = runner.invoke(app, ["backup", "delete", "--keep-last", "1", "--dry-run", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["file"] == old.name and old.exists()
    out = runner.invoke(app, ["backup", "delete", "--keep-last", "1"])
    assert out.exit_code == 0 and "1 file(s) removed" in out.stdout and not old.exists()
    bad = runner.invoke(app, ["backup", "delete", "--keep-last", "0"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_backup_delete_refuses_a_symlinked_upload_dir(store, backup_env, tmp_path):
    base = bfiles.backup_dir()
    (tmp_path / "elsewhere").mkdir()
    (base / "upload").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BackupError, match="not a directory"):
        delete_backups()
    with pytest.raises(BackupError, match="never removes every backup"):
        delete_backups(retention_days=30, keep_last=0)


# ----------------------------------------------------------------------------- robots
def test_backup_robots_run_for_real(store, backup_env, prefect_client_sync, tmp_path):
    from flows.backup import backup_delete, credentials_backup, secrets_backup
    from tests.test_credential_robots import _artifacts

    written = populate(store, vault(), devices=2, per_device=2, history=2)
    made = credentials_backup()
    made_secrets = secrets_backup()
    assert made["credential rows"] == 4 and made["credential_history rows"] == 8
    assert made_secrets["webhook_source rows"] == 2
    assert verify_backup(made["file"], backup_env).sha256 == made["sha256"]
    old = bfiles.backup_dir() / bfiles.new_name("credentials", datetime.now(UTC) - timedelta(400))
    old.write_bytes(b"old")
    deleted = backup_delete(retention_days=30, keep_last=1)
    assert deleted["removed"] == 1 and not old.exists()
    with Session(store) as s:
        types = [n.type for n in s.exec(select(Notification))]
        assert types.count("Backup performed") == 2
        actions = {a.action for a in s.exec(select(AuditLog))}
        assert {"backup.created", "backup.deleted"} <= actions
    text = _artifacts(prefect_client_sync, ["credentials-backup", "secrets-backup",
                                            "backup-delete", "credentials-backup-progress"])
    assert "16 of 16 record(s) sealed" in text  # 2 devices, 2 host keys, 4 credentials, 8 history
    assert made["file"] in text and made["sha256"] in text and old.name in text
    assert not any(v in text for v in written.values())


def test_failed_backup_queues_error_on_backup(store, backup_env, monkeypatch, prefect_server):
    from flows.backup import credentials_backup

    monkeypatch.setenv("PAMFLOW_BACKUP_RECIPIENTS", "not-a-key")
    with pytest.raises(BackupKeyError):
        credentials_backup()
    with Session(store) as s:
        assert s.exec(select(Notification).where(Notification.type == "Error on backup")).first()
