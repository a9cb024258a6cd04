import base64
import os
import stat

import pytest

from pamflow.passwords import PasswordPolicy, PolicyError
from pamflow.vault import Keyring, Vault, VaultError, key_id_for


def _key() -> bytes:
    return os.urandom(32)


def test_round_trip_and_key_id_in_ciphertext():
    key = _key()
    vault = Vault(Keyring.from_env_value(base64.b64encode(key).decode()))
    secret = "p$a\"ss w%`d\\x ünï"
    token = vault.encrypt(secret)
    assert secret not in token
    assert Vault.key_id_of(token) == key_id_for(key)
    assert vault.decrypt(token) == secret
    assert vault.encrypt(secret) != token  # fresh nonce each time


def test_wrong_key_fails_clearly():
    token = Vault(Keyring.from_env_value(base64.b64encode(_key()).decode())).encrypt("s3cret")
    other = Vault(Keyring.from_env_value(base64.b64encode(_key()).decode()))
    with pytest.raises(VaultError, match="does not hold") as err:
        other.decrypt(token)
    assert "s3cret" not in str(err.value)


def test_same_key_id_wrong_key_material_fails_authentication():
    token = Vault(Keyring(active="k1", keys={"k1": _key()})).encrypt("s3cret")
    with pytest.raises(VaultError, match="failed authentication"):
        Vault(Keyring(active="k1", keys={"k1": _key()})).decrypt(token)


def test_tampered_ciphertext_fails_clearly():
    vault = Vault(Keyring.from_env_value(base64.b64encode(_key()).decode()))
    token = vault.encrypt("s3cret")
    prefix, kid, nonce, sealed = token.split(".")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(VaultError, match="tampered"):
        vault.decrypt(".".join([prefix, kid, nonce, flipped]))
    with pytest.raises(VaultError, match="not a pamflow ciphertext"):
        vault.decrypt("garbage")
    # a ciphertext sealed for another purpose does not open as a credential
    with pytest.raises(VaultError):
        vault.decrypt(vault.encrypt("x", purpose="webhook"), purpose="credential")


def test_key_rotation_keeps_old_ciphertexts_readable():
    old, new = _key(), _key()
    token = Vault(Keyring.from_env_value(base64.b64encode(old).decode())).encrypt("s3cret")
    both = Vault(Keyring.from_env_value(
        f"{base64.b64encode(new).decode()},{base64.b64encode(old).decode()}"))
    assert both.decrypt(token) == "s3cret"
    assert both.needs_rekey(token)
    assert not both.needs_rekey(both.encrypt("s3cret"))


def test_key_file_created_0600_on_first_run(tmp_path, monkeypatch):
    monkeypatch.delenv("PAMFLOW_MASTER_KEY", raising=False)
    monkeypatch.setenv("PAMFLOW_HOME", str(tmp_path))
    ring = Keyring.load()
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.load() == ring  # the same key next time
    token = Vault(ring).encrypt("abc")
    assert Vault(Keyring.load()).decrypt(token) == "abc"


def test_bad_master_key_is_refused():
    with pytest.raises(VaultError, match="32 bytes"):
        Keyring.from_env_value(base64.b64encode(b"short").decode())


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
