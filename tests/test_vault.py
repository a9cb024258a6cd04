"""The vault: ciphertexts bound to their row, key handling, the store's key canary, rekey,
and migration 0002 (purpose-only associated data re-encrypted to bound data)."""

import base64
import json
import os
import stat
import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow import db
from pamflow.models import Credential, CredentialHistory, Device, Operation, SystemParameter, WebhookSource
from pamflow.operations import queue
from pamflow.operations.executor import drain
from pamflow.passwords import PasswordPolicy, PolicyError
from pamflow.vault import (
    Keyring,
    Vault,
    VaultError,
    credential_aad,
    key_id_for,
    reset_vault,
    vault,
    webhook_aad,
)
from pamflow.vault_store import CANARY_KEY, RekeyRefused, open_vault, rekey, status

AAD = credential_aad(1, 1, "secret")


def _key() -> bytes:
    return os.urandom(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(autouse=True)
def _no_events(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


@pytest.fixture
def fresh_vault(monkeypatch):
    """The process-wide vault is opened again for this test, and again after it."""
    reset_vault()
    yield monkeypatch
    reset_vault()


def test_round_trip_and_key_id_in_ciphertext():
    key = _key()
    box = Vault(Keyring.from_env_value(_b64(key)))
    secret = "p$a\"ss w%`d\\x ünï"
    token = box.encrypt(secret, AAD)
    assert secret not in token
    assert Vault.key_id_of(token) == key_id_for(key)
    assert box.decrypt(token, AAD) == secret
    assert box.encrypt(secret, AAD) != token  # fresh nonce each time


def test_wrong_key_fails_clearly():
    token = Vault(Keyring.from_env_value(_b64(_key()))).encrypt("s3cret", AAD)
    other = Vault(Keyring.from_env_value(_b64(_key())))
    with pytest.raises(VaultError, match="does not hold") as err:
        other.decrypt(token, AAD)
    assert "s3cret" not in str(err.value)


def test_same_key_id_wrong_key_material_fails_authentication():
    token = Vault(Keyring(active="k1", keys={"k1": _key()})).encrypt("s3cret", AAD)
    with pytest.raises(VaultError, match="failed authentication"):
        Vault(Keyring(active="k1", keys={"k1": _key()})).decrypt(token, AAD)


def test_tampered_ciphertext_fails_clearly():
    box = Vault(Keyring.from_env_value(_b64(_key())))
    token = box.encrypt("s3cret", AAD)
    prefix, kid, nonce, sealed = token.split(".")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(VaultError, match="tampered"):
        box.decrypt(".".join([prefix, kid, nonce, flipped]), AAD)
    with pytest.raises(VaultError, match="not a pamflow ciphertext"):
        box.decrypt("garbage", AAD)
    with pytest.raises(TypeError):  # no unbound encryption
        box.encrypt("x", b"")


def test_ciphertext_is_bound_to_credential_device_and_field():
    box = Vault(Keyring.from_env_value(_b64(_key())))
    token = box.encrypt("s3cret", credential_aad(7, 3, "secret"))
    for elsewhere in (credential_aad(8, 3, "secret"), credential_aad(7, 4, "secret"),
                      credential_aad(7, 3, "pending"), credential_aad(7, 3, "history"),
                      webhook_aad("import", "secret")):
        with pytest.raises(VaultError, match="failed authentication"):
            box.decrypt(token, elsewhere)
    moved = box.reseal(token, credential_aad(7, 3, "secret"), credential_aad(7, 3, "history"))
    assert box.decrypt(moved, credential_aad(7, 3, "history")) == "s3cret"
    with pytest.raises(VaultError):
        credential_aad(None, 3, "secret")  # an unsaved credential has no id to bind


def test_key_rotation_keeps_old_ciphertexts_readable():
    old, new = _key(), _key()
    token = Vault(Keyring.from_env_value(_b64(old))).encrypt("s3cret", AAD)
    both = Vault(Keyring.from_env_value(f"{_b64(new)},{_b64(old)}"))
    assert both.decrypt(token, AAD) == "s3cret"
    assert both.needs_rekey(token)
    assert not both.needs_rekey(both.encrypt("s3cret", AAD))


@pytest.mark.parametrize("kid", ["a.b", "", "x" * 33, "sp ace", "é", "a/b"])
def test_key_ids_are_validated(kid, tmp_path):
    with pytest.raises(VaultError, match="invalid key id"):
        Keyring.from_env_value(f"{kid}:{_b64(_key())}")
    path = tmp_path / "master.key"
    path.write_text(json.dumps({"active": kid, "keys": {kid: _b64(_key())}}))
    path.chmod(0o600)
    with pytest.raises(VaultError, match="invalid key id"):
        Keyring.from_file(path)
    with pytest.raises(VaultError, match="invalid key id"):
        Keyring(active=kid, keys={kid: _key()})


def test_a_key_id_with_a_dot_no_longer_makes_ciphertexts_unreadable():
    ring = Keyring.from_env_value(f"k-2026_01:{_b64(_key())}")
    box = Vault(ring)
    assert box.decrypt(box.encrypt("s3cret", AAD), AAD) == "s3cret"


def test_key_file_created_0600_atomically_on_first_run(tmp_path, fresh_vault):
    fresh_vault.delenv("PAMFLOW_MASTER_KEY", raising=False)
    fresh_vault.setenv("PAMFLOW_HOME", str(tmp_path))
    ring = Keyring.load(create=True)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temporary file left
    assert Keyring.load() == ring  # the same key next time
    token = Vault(ring).encrypt("abc", AAD)
    assert Vault(Keyring.load()).decrypt(token, AAD) == "abc"
    before = path.read_bytes()
    with pytest.raises(FileExistsError):  # an existing key file is never replaced
        Keyring.create_file(path)
    assert path.read_bytes() == before
    assert Keyring.load(create=True) == ring


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_key_file_readable_by_others_is_refused(tmp_path, fresh_vault, mode):
    fresh_vault.delenv("PAMFLOW_MASTER_KEY", raising=False)
    fresh_vault.setenv("PAMFLOW_HOME", str(tmp_path))
    Keyring.load(create=True)
    path = tmp_path / "master.key"
    path.chmod(mode)
    with pytest.raises(VaultError, match=f"mode {mode:04o}.*chmod 600"):
        Keyring.load()
    with pytest.raises(VaultError, match="chmod 600"):
        Keyring.load(create=True)


def test_without_a_key_nothing_is_created_unless_asked(tmp_path, fresh_vault):
    fresh_vault.delenv("PAMFLOW_MASTER_KEY", raising=False)
    fresh_vault.setenv("PAMFLOW_HOME", str(tmp_path))
    with pytest.raises(VaultError, match="no master key on this host"):
        Keyring.load()
    assert not (tmp_path / "master.key").exists()


def test_bad_master_key_is_refused():
    with pytest.raises(VaultError, match="32 bytes"):
        Keyring.from_env_value(base64.b64encode(b"short").decode())


# ----------------------------------------------------------------------------- the store canary
def _add_credential(engine, box: Vault, secret: str, address: str = "10.9.0.1") -> int:
    with Session(engine) as s:
        dev = Device(name=address, address=address)
        s.add(dev)
        s.flush()
        cred = Credential(device_id=dev.id, username="root")
        s.add(cred)
        s.flush()
        cred.secret = box.encrypt(secret, credential_aad(cred.id, dev.id, "secret"))
        s.add(cred)
        s.commit()
        return cred.id


def test_a_second_host_never_gets_a_fresh_key_for_a_sealed_store(store, tmp_path, fresh_vault):
    fresh_vault.delenv("PAMFLOW_MASTER_KEY", raising=False)
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    fresh_vault.setenv("PAMFLOW_HOME", str(host_a))
    first = open_vault(store)  # an empty store: the first host creates the key
    assert (host_a / "master.key").exists()
    kid = first.active_key_id
    with Session(store) as s:
        assert Vault.key_id_of(s.get(SystemParameter, CANARY_KEY).value) == kid

    # host B: no key configured, same store -> refused, and no key file is created there
    fresh_vault.setenv("PAMFLOW_HOME", str(host_b))
    with pytest.raises(VaultError, match=f"sealed with key id {kid}") as err:
        open_vault(store)
    assert "PAMFLOW_MASTER_KEY" in str(err.value)
    assert not (host_b / "master.key").exists()

    # host B with some other key: refused, naming both key ids
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"other:{_b64(_key())}")
    with pytest.raises(VaultError, match=f"this store's secrets were sealed with key id {kid}; "
                                         "this host has other"):
        open_vault(store)

    # host B with the right key (copied): fine
    fresh_vault.delenv("PAMFLOW_MASTER_KEY")
    host_b.mkdir(exist_ok=True)
    (host_b / "master.key").write_bytes((host_a / "master.key").read_bytes())
    (host_b / "master.key").chmod(0o600)
    assert open_vault(store).active_key_id == kid


def test_a_store_with_ciphertexts_but_no_canary_is_checked_against_them(store, fresh_vault):
    sealed_with = Vault(Keyring.from_env_value(f"old:{_b64(_key())}"))
    _add_credential(store, sealed_with, "s3cret")
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"new:{_b64(_key())}")
    with pytest.raises(VaultError, match="sealed with key id old; this host has new"):
        open_vault(store)
    with Session(store) as s:
        assert s.get(SystemParameter, CANARY_KEY) is None  # nothing recorded for a wrong key


def test_executor_gateway_and_cli_fail_fast_on_a_store_sealed_with_another_key(store, fresh_vault):
    right = f"right:{_b64(_key())}"
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", right)
    cred_id = _add_credential(store, Vault(Keyring.from_env_value(right)), "s3cret")
    open_vault(store)  # records the canary
    queue.enqueue(store, "verify", cred_id)
    reset_vault()
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"wrong:{_b64(_key())}")
    message = "sealed with key id right; this host has wrong"
    with pytest.raises(VaultError, match=message):
        drain(store)
    from pamflow.operations.executor import serve

    with pytest.raises(VaultError, match=message):
        serve(lifetime_s=60, engine=store)  # at once, not when work arrives
    with Session(store) as s:  # nothing was claimed
        assert [o.state for o in s.exec(select(Operation))] == ["queued"]

    import asyncio

    from pamflow.webhooks.app import Gateway

    with pytest.raises(VaultError, match=message):
        asyncio.run(Gateway(store).start())

    env = {**os.environ, "PAMFLOW_MASTER_KEY": f"wrong:{_b64(_key())}"}
    for args in (["vault", "status"], ["up", "--no-worker", "--no-gateway"],
                 ["webhooks", "serve", "--port", "1"]):
        res = subprocess.run([sys.executable, "-m", "pamflow.cli", *args], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "sealed with key id right; this host has wrong" in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_a_ciphertext_copied_onto_another_credential_is_never_sent(store):
    box = vault()
    a = _add_credential(store, box, "secret-of-a", "10.9.0.1")
    b = _add_credential(store, box, "secret-of-b", "127.0.0.1")
    with Session(store) as s:
        copied = s.get(Credential, a).secret
        cred = s.get(Credential, b)
        cred.secret = copied
        s.add(cred)
        s.commit()
    queue.enqueue(store, "verify", b)
    assert drain(store).failed == 1
    with Session(store) as s:
        [op] = s.exec(select(Operation)).all()
    assert "step load" in op.error and "failed authentication" in op.error
    assert "secret-of-a" not in op.error


# ----------------------------------------------------------------------------- status / rekey
@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_status_and_rekey_move_every_ciphertext_to_the_active_key(backend, request, fresh_vault):
    store = request.getfixturevalue(backend)
    old = Keyring.from_env_value(f"old:{_b64(_key())}")
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"old:{_b64(old.keys['old'])}")
    box_old = Vault(old)
    ids = [_add_credential(store, box_old, f"pw-{i}", f"10.9.1.{i}") for i in range(5)]
    with Session(store) as s:
        cred = s.get(Credential, ids[0])
        s.add(CredentialHistory(credential_id=cred.id, version=0, secret=box_old.encrypt(
            "older", credential_aad(cred.id, cred.device_id, "history"))))
        cred.pending_secret = box_old.encrypt("next", credential_aad(cred.id, cred.device_id, "pending"))
        s.add(cred)
        s.commit()
    from pamflow.webhooks.sources import add_source, rotate_secret

    add_source(store, "import", tenant="acme")
    rotate_secret(store, "import", grace_seconds=60)
    open_vault(store)

    new_key = _key()
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"new:{_b64(new_key)},old:{_b64(old.keys['old'])}")
    reset_vault()
    both = open_vault(store)
    before = status(store, both)
    # 5 secrets, a pending, a history row, a webhook secret and its previous one
    assert before.by_key() == {"old": 9} and before.undecryptable_total == 0
    counts = rekey(store, both)
    assert counts["credential.secret"]["rekeyed"] == 5
    assert counts["credential_history.secret"]["rekeyed"] == 1
    assert counts["webhook_source.previous_secret"]["rekeyed"] == 1
    assert counts["system_parameter.vault.canary"]["rekeyed"] == 1
    assert status(store, both).by_key() == {"new": 9}
    again = rekey(store, both)  # idempotent
    assert all(t["rekeyed"] == 0 for t in again.values())

    # the old key can go: the new one alone opens everything
    only_new = Vault(Keyring.from_env_value(f"new:{_b64(new_key)}"))
    assert status(store, only_new).undecryptable_total == 0
    with Session(store) as s:
        c = s.get(Credential, ids[3])
        assert only_new.decrypt(c.secret, credential_aad(c.id, c.device_id, "secret")) == "pw-3"
        src = s.exec(select(WebhookSource)).one()
        assert src.tenant == "acme"
        only_new.decrypt(src.previous_secret, webhook_aad("import", "previous"))


def test_rekey_changes_nothing_when_a_ciphertext_cannot_be_decrypted(store, fresh_vault):
    key = f"k1:{_b64(_key())}"
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", key)
    box = Vault(Keyring.from_env_value(key))
    good = _add_credential(store, box, "fine")
    lost = _add_credential(store, Vault(Keyring.from_env_value(f"gone:{_b64(_key())}")), "lost",
                           "10.9.0.2")
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"k2:{_b64(_key())},{key}")
    both = Vault(Keyring.from_env_value(os.environ["PAMFLOW_MASTER_KEY"]))
    with Session(store) as s:
        before = {c.id: c.secret for c in s.exec(select(Credential))}
    with pytest.raises(RekeyRefused, match=f"credential.secret id {lost}.*nothing was re-encrypted"):
        rekey(store, both)
    with Session(store) as s:
        assert {c.id: c.secret for c in s.exec(select(Credential))} == before
    found = status(store, both)
    assert found.undecryptable_total == 1 and found.undecryptable[0].row_id == lost
    assert good != lost


def test_vault_cli_status_and_rekey(store, fresh_vault):
    from typer.testing import CliRunner

    from pamflow.cli import app

    key = f"k1:{_b64(_key())}"
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", key)
    box = Vault(Keyring.from_env_value(key))
    ids = [_add_credential(store, box, f"pw-{i}", f"10.9.2.{i}") for i in range(3)]
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    res = runner.invoke(app, ["vault", "status"], env=env)
    assert res.exit_code == 0, res.output
    assert "key ids on this host: k1 (active)" in res.output and "undecryptable: none" in res.output
    assert "credential.secret" in res.output and "pw-" not in res.output
    reset_vault()
    fresh_vault.setenv("PAMFLOW_MASTER_KEY", f"k2:{_b64(_key())},{key}")
    res = runner.invoke(app, ["vault", "rekey"], env=env)
    assert res.exit_code == 0 and "Re-encrypted under key id k2" in res.output, res.output
    with Session(store) as s:
        assert {Vault.key_id_of(c.secret) for c in s.exec(select(Credential))} == {"k2"}
        bad = s.get(Credential, ids[1])
        bad.secret = bad.secret[:-4] + ("AAAA" if not bad.secret.endswith("AAAA") else "BBBB")
        s.add(bad)
        s.commit()
    res = runner.invoke(app, ["vault", "status"], env=env)
    assert res.exit_code == 1 and f"cannot decrypt credential.secret id {ids[1]}" in res.output
    res = runner.invoke(app, ["vault", "rekey"], env=env)
    assert res.exit_code == 1 and "nothing was re-encrypted" in res.output


# ----------------------------------------------------------------------------- migration 0002
def _store_at_0001(url: str):
    from alembic import command

    engine = db.make_engine(url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0001")
    return engine


def _legacy_rows(engine, box: Vault, garbage: bool = False) -> dict:
    """Rows as revision 0001 wrote them: ciphertexts with purpose-only associated data."""
    now = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        for i in (1, 2):
            conn.execute(sa.text(
                "INSERT INTO device (id, name, address, platform, ports, tenant, source, "
                "maintenance_mode, active, connectivity, settings, created_at, updated_at) VALUES "
                f"({i}, 'd{i}', '10.0.0.{i}', 'linux', '[]', 'default', 'manual', false, true, "
                f"'unknown', '{{}}', '{now}', '{now}')"))
        creds = {10: (1, "current-10", "pending-10"), 11: (2, "current-11", None)}
        for cid, (dev, secret, pending) in creds.items():
            conn.execute(sa.text(
                "INSERT INTO credential (id, device_id, username, kind, secret, secret_version, "
                "pending_secret, status, policy, auto_change, created_at, updated_at) VALUES "
                "(:id, :dev, :user, 'local', :secret, 1, :pending, 'ok', 'default', true, :now, :now)"),
                {"id": cid, "dev": dev, "user": f"u{cid}", "now": now,
                 "secret": box.encrypt(secret, b"credential"),
                 "pending": box.encrypt(pending, b"credential") if pending else None})
        conn.execute(sa.text(
            "INSERT INTO credential_history (id, credential_id, version, secret, retired_at, reason) "
            "VALUES (5, 11, 0, :secret, :now, 'rotated')"),
            {"secret": "pfv1.nokey.AAAA.AAAA" if garbage else box.encrypt("history-11", b"credential"),
             "now": now})
        conn.execute(sa.text(
            "INSERT INTO webhook_source (id, name, secret, previous_secret, secret_version, enabled, "
            "created_at) VALUES (3, 'import', :s, :p, 2, true, :now)"),
            {"s": box.encrypt("whsec_current", b"webhook"), "p": box.encrypt("whsec_old", b"webhook"),
             "now": now})
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]
                for t in ("credential", "credential_history", "webhook_source")}


def _migration_cases():
    return ["sqlite", "postgresql"]


@pytest.mark.parametrize("backend", _migration_cases())
def test_migration_0002_binds_every_ciphertext_to_its_row(backend, tmp_path):
    from tests.fixtures.stores import create_pg_database, drop_pg_database

    name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
    else:
        name = create_pg_database()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        engine = _store_at_0001(url)
        box = Vault(Keyring.load())  # the tests' PAMFLOW_MASTER_KEY
        _legacy_rows(engine, box)
        db.migrate(engine)
        with Session(engine) as s:
            c10, c11 = s.get(Credential, 10), s.get(Credential, 11)
            assert box.decrypt(c10.secret, credential_aad(10, 1, "secret")) == "current-10"
            assert box.decrypt(c10.pending_secret, credential_aad(10, 1, "pending")) == "pending-10"
            assert box.decrypt(c11.secret, credential_aad(11, 2, "secret")) == "current-11"
            h = s.get(CredentialHistory, 5)
            assert box.decrypt(h.secret, credential_aad(11, 2, "history")) == "history-11"
            src = s.get(WebhookSource, 3)
            assert box.decrypt(src.secret, webhook_aad("import", "secret")) == "whsec_current"
            assert box.decrypt(src.previous_secret, webhook_aad("import", "previous")) == "whsec_old"
            assert src.tenant == "default" and c10.candidate_secret is None
            with pytest.raises(VaultError):  # the old purpose-only data no longer opens them
                box.decrypt(c10.secret, b"credential")
        assert status(engine, box).undecryptable_total == 0
        engine.dispose()
    finally:
        if name:
            drop_pg_database(name)


@pytest.mark.parametrize("backend", _migration_cases())
def test_migration_0002_fails_whole_on_an_undecryptable_row(backend, tmp_path):
    from tests.fixtures.stores import create_pg_database, drop_pg_database

    name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
    else:
        name = create_pg_database()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        engine = _store_at_0001(url)
        before = _legacy_rows(engine, Vault(Keyring.load()), garbage=True)
        with pytest.raises(VaultError, match="cannot decrypt credential_history.secret of row id 5"):
            db.migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0001"
            after = {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]
                     for t in ("credential", "credential_history", "webhook_source")}
            columns = {c["name"] for c in sa.inspect(conn).get_columns("credential")}
        assert after == before and "candidate_secret" not in columns
        engine.dispose()
    finally:
        if name:
            drop_pg_database(name)


def test_password_policy():
    policy = PasswordPolicy(length=16, classes=("lower", "digits"), min_each=3, exclude="0oO1l")
    for _ in range(200):
        pw = policy.generate()
        assert policy.satisfied_by(pw)
        assert not set(pw) & set("0oO1l")
        assert sum(c.isdigit() for c in pw) >= 3
    assert len({policy.generate() for _ in range(100)}) == 100
    with pytest.raises(PolicyError):
        PasswordPolicy(length=3)
    with pytest.raises(PolicyError):
        PasswordPolicy(classes=("digits",), exclude="0123456789")
    with pytest.raises(PolicyError):
        PasswordPolicy(classes=("emoji",))
