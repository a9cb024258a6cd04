"""The write-ahead rotation through the queue and executor on WinRM and LDAP targets.

The same protocol as on SSH (tests/test_rotation.py), against the WS-Management endpoint
pywinrm really talks to and a real slapd: the new secret is applied, verified by logging
in, promoted; the old one no longer works.
"""

from __future__ import annotations

import secrets

from sqlmodel import Session

from pamflow import queue
from pamflow.executor import drain
from pamflow.models import Credential, Device
from pamflow.vault import credential_aad, vault
from tests.fixtures.winrm import ADMIN, ADMIN_PASSWORD
from tests.test_rotation import (  # noqa: F401  (autouse fixture)
    _quiet_events,
    add_credential,
    assert_no_secret,
    notifications_of,
    recorded,
    secret_of,
    set_policy,
    stored_texts,
)


def _device_with_admin(engine, *, name, platform, port, settings, admin_user, admin_pw) -> Device:
    vault()  # opened before the session holds SQLite's write lock
    with Session(engine, expire_on_commit=False) as db:
        dev = Device(name=name, address="127.0.0.1", ports=[port], platform=platform,
                     settings=settings)
        db.add(dev)
        db.commit()
        admin = Credential(device_id=dev.id, username=admin_user, auto_change=False)
        db.add(admin)
        db.flush()
        admin.secret = vault().encrypt(admin_pw, credential_aad(admin.id, dev.id, "secret"))
        db.add(admin)
        db.commit()
        dev.admin_credential_id = admin.id
        db.add(dev)
        db.commit()
        db.refresh(dev)
        return dev


def test_winrm_accounts_rotate_through_the_executor(store, winrm_http):
    policy = set_policy(store)  # quotes, $, backticks, backslashes, spaces, %
    dev = _device_with_admin(store, name="win01", platform="windows", port=winrm_http.port,
                             settings={"scheme": "http", "transport": "ntlm"},
                             admin_user=ADMIN, admin_pw=ADMIN_PASSWORD)
    olds = {}
    for _ in range(3):
        user, pw = f"svc{secrets.token_hex(3)}", f"Old'pw ${secrets.token_hex(4)}"
        winrm_http.add_account(user, pw)
        cred = add_credential(store, dev, user, pw, policy=policy)
        olds[cred.id] = (user, pw)
        queue.enqueue(store, "change", cred.id, requested_by="test")

    summary = drain(store)

    assert summary["succeeded"] == 3 and summary["failed"] == 0
    news = []
    for cred_id, (user, old) in olds.items():
        new = secret_of(store, cred_id)
        news.append(new)
        assert new != old and recorded(store, cred_id).status == "ok"
        assert winrm_http.login(user, new) is not None
        assert winrm_http.login(user, old) is None
    assert len(notifications_of(store, "Change Executed")) == 3
    # the secrets never went on a command line the "Windows host" saw
    commands = "\n".join(str(c.command_line) for c in winrm_http.commands)
    assert_no_secret(commands, news + [pw for _u, pw in olds.values()])
    assert_no_secret(stored_texts(store), news + [pw for _u, pw in olds.values()])


def test_ldap_accounts_rotate_through_the_executor(store, slapd):
    policy = set_policy(store)
    dev = _device_with_admin(
        store, name="ldap01", platform="ldap", port=slapd.port,
        settings={"user_dn_template": f"uid={{username}},{slapd.people_dn}"},
        admin_user=slapd.admin_dn, admin_pw=slapd.admin_password)
    olds = {}
    for _ in range(3):
        uid, pw = f"u{secrets.token_hex(4)}", f"Old pw %{secrets.token_hex(4)}"
        slapd.add_user(uid, pw)
        cred = add_credential(store, dev, uid, pw, policy=policy)
        olds[cred.id] = (uid, pw)
        queue.enqueue(store, "change", cred.id, requested_by="test")

    summary = drain(store)

    assert summary["succeeded"] == 3 and summary["failed"] == 0
    for cred_id, (uid, old) in olds.items():
        new = secret_of(store, cred_id)
        dn = f"uid={uid},{slapd.people_dn}"
        assert slapd.can_bind(dn, new) and not slapd.can_bind(dn, old)
        assert recorded(store, cred_id).status == "ok"

    # a verify operation confirms the recorded secret on the directory
    first = next(iter(olds))
    queue.enqueue(store, "verify", first, requested_by="test")
    assert drain(store)["succeeded"] == 1
    assert notifications_of(store, "Password confirmed")
