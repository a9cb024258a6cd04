"""The write-ahead rotation through the queue and executor on WinRM and LDAP targets.

The same protocol as on SSH (tests/test_rotation.py), against the WS-Management endpoint
pywinrm really talks to and a real slapd: the new secret is applied, verified by logging
in, promoted; the old one no longer works. Both go over TLS with the device's CA (the
default settings); a certificate the device does not trust fails the operation for good
before any password is sent.
"""

from __future__ import annotations

import secrets

from sqlmodel import Session

from pamflow.models import Credential, CredentialStatus, Device
from pamflow.operations import queue
from pamflow.operations.executor import drain
from pamflow.vault import credential_aad, vault
from tests.fixtures.winrm import ADMIN, ADMIN_PASSWORD
from tests.test_rotation import (  # noqa: F401  (autouse fixture)
    _quiet_events,
    add_credential,
    assert_no_secret,
    notifications_of,
    operations,
    recorded,
    secret_of,
    set_policy,
    stored_texts,
)


def _device_with_admin(engine, *, name, platform, port, settings, admin_user, admin_pw,
                       address="127.0.0.1") -> Device:
    vault()  # opened before the session holds SQLite's write lock
    with Session(engine, expire_on_commit=False) as db:
        dev = Device(name=name, address=address, ports=[port], platform=platform,
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


def test_winrm_accounts_rotate_through_the_executor(store, winrm_https):
    winrm_http = winrm_https  # the default: HTTPS, certificate validated
    policy = set_policy(store)  # quotes, $, backticks, backslashes, spaces, %
    dev = _device_with_admin(store, name="win01", platform="windows", port=winrm_https.port,
                             settings={"ca_certs_file": str(winrm_https.cert_path)},
                             admin_user=ADMIN, admin_pw=ADMIN_PASSWORD)
    olds = {}
    for _ in range(3):
        user, pw = f"svc{secrets.token_hex(3)}", f"Old'pw ${secrets.token_hex(4)}"
        winrm_http.add_account(user, pw)
        cred = add_credential(store, dev, user, pw, policy=policy)
        olds[cred.id] = (user, pw)
        queue.enqueue(store, "change", cred.id, requested_by="test")

    summary = drain(store)

    assert summary.succeeded == 3 and summary.failed == 0
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
    dev = _device_with_admin(  # the default: LDAPS, certificate validated
        store, name="ldap01", platform="ldap", port=slapd.tls_port,
        settings={"user_dn_template": f"uid={{username}},{slapd.people_dn}",
                  "ca_certs_file": str(slapd.ca_cert)},
        admin_user=slapd.admin_dn, admin_pw=slapd.admin_password)
    olds = {}
    for _ in range(3):
        uid, pw = f"u{secrets.token_hex(4)}", f"Old pw %{secrets.token_hex(4)}"
        slapd.add_user(uid, pw)
        cred = add_credential(store, dev, uid, pw, policy=policy)
        olds[cred.id] = (uid, pw)
        queue.enqueue(store, "change", cred.id, requested_by="test")

    summary = drain(store)

    assert summary.succeeded == 3 and summary.failed == 0
    for cred_id, (uid, old) in olds.items():
        new = secret_of(store, cred_id)
        dn = f"uid={uid},{slapd.people_dn}"
        assert slapd.can_bind(dn, new) and not slapd.can_bind(dn, old)
        assert recorded(store, cred_id).status == "ok"

    # a verify operation confirms the recorded secret on the directory
    first = next(iter(olds))
    queue.enqueue(store, "verify", first, requested_by="test")
    assert drain(store).succeeded == 1
    assert notifications_of(store, "Password confirmed")


def test_untrusted_certificate_fails_the_change_for_good_with_nothing_sent(store, slapd,
                                                                          winrm_https):
    policy = set_policy(store)
    ldap_dev = _device_with_admin(  # no ca_certs_file: slapd's certificate is not trusted
        store, name="ldap02", platform="ldap", port=slapd.tls_port,
        settings={"user_dn_template": f"uid={{username}},{slapd.people_dn}"},
        admin_user=slapd.admin_dn, admin_pw=slapd.admin_password)
    win_dev = _device_with_admin(store, name="win02", platform="windows", port=winrm_https.port,
                                 settings={}, admin_user=ADMIN, admin_pw=ADMIN_PASSWORD,
                                 address="localhost")
    uid, user = f"u{secrets.token_hex(4)}", f"svc{secrets.token_hex(3)}"
    slapd.add_user(uid, "Old-ldap-1")
    winrm_https.add_account(user, "Old-win-1")
    creds = [add_credential(store, ldap_dev, uid, "Old-ldap-1", policy=policy),
             add_credential(store, win_dev, user, "Old-win-1", policy=policy)]
    for cred in creds:
        queue.enqueue(store, "change", cred.id, requested_by="test")
    requests_before = winrm_https.requests

    summary = drain(store)

    assert summary.failed == 2 and summary.succeeded == 0
    for op in operations(store):
        assert op.state == "failed" and op.retryable is False, op.error
        assert "not trusted" in op.error and "connect" in op.error
    for cred in creds:
        after = recorded(store, cred.id)
        assert after.status == CredentialStatus.ok and after.pending_secret is None
        assert secret_of(store, cred.id) == cred_secret(cred)
    assert slapd.can_bind(f"uid={uid},{slapd.people_dn}", "Old-ldap-1")
    assert winrm_https.password_of(user) == "Old-win-1"
    assert winrm_https.requests == requests_before  # not one WS-Management request


def cred_secret(cred: Credential) -> str:
    return vault().decrypt(cred.secret, credential_aad(cred.id, cred.device_id, "secret"))
