"""LDAP target against a real OpenLDAP slapd (tests/peers/slapd.py).

slapd cannot act as Active Directory: it stores a ``unicodePwd`` value (Microsoft's schema
is loaded) but does not treat it as a password, and it has no equality rule for it, so the
AD *self-service* delete-old/add-new cannot run against it. The AD path is therefore tested
for its encoding and modification shape, and the admin reset end to end as far as the
value that reaches the directory over StartTLS.
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket

import pytest
from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE

from pamflow.platform import free_port
from pamflow.targets.base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    Endpoint,
    Login,
    Unreachable,
)
from pamflow.targets.ldap import LDAPTarget, ad_password_changes, ad_password_value

SPECIAL = "a'b\"c $HOME `id` back\\slash 100% & | < > ; : * ( ) é€ ^!"
TIMEOUT = 5


def _uid() -> str:
    return f"u{secrets.token_hex(4)}"


def _endpoint(slapd, tls: str = "", **settings) -> Endpoint:
    base = {"user_dn_template": f"uid={{username}},{slapd.people_dn}"}
    port = slapd.port
    if tls == "ldaps":
        base.update(use_ssl=True, ca_certs_file=str(slapd.ca_cert))
        port = slapd.tls_port
    elif tls == "starttls":
        base.update(start_tls=True, ca_certs_file=str(slapd.ca_cert))
    base.update(settings)
    return Endpoint(device_id=7, name="ldap01", address="127.0.0.1", port=port,
                    settings={k: v for k, v in base.items() if v is not None})


def _admin(slapd) -> Login:
    return Login(slapd.admin_dn, slapd.admin_password)


@pytest.mark.parametrize("tls", ["", "starttls", "ldaps"])
def test_admin_change_then_new_binds_and_old_fails(slapd, tls):
    uid = _uid()
    dn = slapd.add_user(uid, "Old-pw-1")
    endpoint, target = _endpoint(slapd, tls), LDAPTarget()

    [result] = target.apply(endpoint, [Change(uid, SPECIAL)], _admin(slapd), TIMEOUT)

    assert result.ok, result.error
    assert target.verify(endpoint, Login(uid, SPECIAL), TIMEOUT) is True
    assert target.verify(endpoint, Login(uid, "Old-pw-1"), TIMEOUT) is False
    assert slapd.can_bind(dn, SPECIAL) and not slapd.can_bind(dn, "Old-pw-1")
    [stored] = slapd.read(dn, "userPassword")
    assert stored.startswith(b"{SSHA}")  # the exop let the server hash it


def test_special_characters_each_survive(slapd):
    specials = ["quote'single", 'quote"double', "dollar$var", "back`tick", "back\\slash",
                "with space", "per%cent%", "paren(*)star", "colon:and;semi", "ünï€ødé"]
    uids = [_uid() for _ in specials]
    for uid in uids:
        slapd.add_user(uid, "initial-1")
    endpoint, target = _endpoint(slapd), LDAPTarget()
    results = target.apply(endpoint, [Change(u, p) for u, p in zip(uids, specials, strict=True)],
                           _admin(slapd), TIMEOUT)
    assert all(r.ok for r in results), [r.error for r in results]
    for uid, password in zip(uids, specials, strict=True):
        assert target.verify(endpoint, Login(uid, password), TIMEOUT)


def test_admin_change_finds_the_account_by_search(slapd):
    uid = _uid()
    dn = slapd.add_user(uid, "initial-1", ou="people")
    endpoint = _endpoint(slapd, user_dn_template=None, search_base=slapd.suffix)
    target = LDAPTarget()

    [result] = target.apply(endpoint, [Change(uid, "Searched-1")], _admin(slapd), TIMEOUT)

    assert result.ok, result.error
    assert slapd.can_bind(dn, "Searched-1")
    assert target.verify(endpoint, Login(uid, "Searched-1"), TIMEOUT) is True  # anon search
    assert target.verify(endpoint, Login(uid, "initial-1"), TIMEOUT) is False


def test_self_change_without_admin(slapd):
    uid, other = _uid(), _uid()
    dn = slapd.add_user(uid, "Current-1")
    other_dn = slapd.add_user(other, "Other-1")
    target = LDAPTarget()
    for endpoint in (_endpoint(slapd, "starttls"),
                     _endpoint(slapd, user_dn_template=None, search_base=slapd.people_dn)):
        results = target.apply(endpoint, [Change(uid, SPECIAL, current_secret="Current-1"),
                                          Change(other, "never", current_secret="not-it")],
                               None, TIMEOUT)
        assert results[0].ok, results[0].error
        assert isinstance(results[1].error, AuthenticationFailed)
        assert slapd.can_bind(dn, SPECIAL) and slapd.can_bind(other_dn, "Other-1")
        # back, for the second endpoint's round
        [back] = target.apply(endpoint, [Change(uid, "Current-1", current_secret=SPECIAL)],
                              None, TIMEOUT)
        assert back.ok, back.error


def test_wrong_admin_password_is_authentication_failed(slapd):
    uid = _uid()
    dn = slapd.add_user(uid, "initial-1")
    with pytest.raises(AuthenticationFailed) as info:
        LDAPTarget().apply(_endpoint(slapd), [Change(uid, "New-1!")],
                           Login(slapd.admin_dn, "wrong-admin-pw"), TIMEOUT)
    assert "wrong-admin-pw" not in str(info.value) and "New-1!" not in str(info.value)
    assert "ldap01" in str(info.value)
    assert slapd.can_bind(dn, "initial-1")


def test_unknown_user(slapd):
    known = _uid()
    slapd.add_user(known, "initial-1")
    target = LDAPTarget()
    for endpoint in (_endpoint(slapd),
                     _endpoint(slapd, user_dn_template=None, search_base=slapd.suffix)):
        results = target.apply(endpoint, [Change("nosuchuser", "New-1!"), Change(known, "New-2")],
                               _admin(slapd), TIMEOUT)
        assert isinstance(results[0].error, ChangeRefused)
        assert "no such account" in str(results[0].error)
        assert "nosuchuser" in str(results[0].error)
        assert results[1].ok, results[1].error  # the rest of the batch is not lost
        assert target.verify(endpoint, Login("nosuchuser", "New-1!"), TIMEOUT) is False


def test_closed_port_is_unreachable():
    endpoint = Endpoint(device_id=7, name="ldap01", address="127.0.0.1", port=free_port(),
                        settings={"user_dn_template": "uid={username},dc=x"})
    target = LDAPTarget()
    with pytest.raises(Unreachable) as info:
        target.apply(endpoint, [Change("someone", "New-1!")], Login("cn=a,dc=x", "pw"), 2)
    assert info.value.retryable and "New-1!" not in str(info.value)
    with pytest.raises(Unreachable):
        target.apply(endpoint, [Change("someone", "New-1!", current_secret="Old")], None, 2)
    with pytest.raises(Unreachable):
        target.verify(endpoint, Login("someone", "New-1!"), 2)


def test_silent_server_times_out_as_unreachable():
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = Endpoint(device_id=7, name="ldap01", address="127.0.0.1",
                            port=listener.getsockname()[1],
                            settings={"user_dn_template": "uid={username},dc=x"})
        with pytest.raises(Unreachable):
            LDAPTarget().verify(endpoint, Login("someone", "pw"), 1)
        with pytest.raises(Unreachable):
            LDAPTarget().apply(endpoint, [Change("someone", "New-1!")],
                               Login("cn=a,dc=x", "pw"), 1)


def test_untrusted_certificate(slapd):
    uid = _uid()
    slapd.add_user(uid, "initial-1")
    target = LDAPTarget()
    for tls in ("ldaps", "starttls"):
        endpoint = _endpoint(slapd, tls, ca_certs_file=None)
        with pytest.raises(Unreachable) as info:
            target.verify(endpoint, Login(uid, "initial-1"), TIMEOUT)
        assert info.value.retryable is False
        assert target.verify(_endpoint(slapd, tls, ca_certs_file=None, tls_validate="none"),
                             Login(uid, "initial-1"), TIMEOUT) is True


def test_empty_password_never_verifies(slapd):
    uid = _uid()
    slapd.add_user(uid, "initial-1")
    # an empty simple bind is an unauthenticated bind that slapd would *accept*
    assert LDAPTarget().verify(_endpoint(slapd), Login(uid, ""), TIMEOUT) is False


def test_errors_and_logs_carry_no_secret(slapd, caplog):
    uid = _uid()
    slapd.add_user(uid, "initial-1")
    endpoint, target = _endpoint(slapd), LDAPTarget()
    with caplog.at_level(logging.DEBUG):
        results = target.apply(endpoint, [Change("nosuchuser", SPECIAL),
                                          Change(uid, SPECIAL, current_secret="bad")],
                               None, TIMEOUT)
        with pytest.raises(AuthenticationFailed) as info:
            target.apply(endpoint, [Change(uid, SPECIAL)], Login(slapd.admin_dn, SPECIAL),
                         TIMEOUT)
    texts = [str(r.error) for r in results] + [repr(r) for r in results]
    texts += [str(info.value), caplog.text]
    assert all(not r.ok for r in results)
    for text in texts:
        assert SPECIAL not in text and "initial-1" not in text


# -- Active Directory ------------------------------------------------------------------------

def test_ad_unicodepwd_encoding():
    assert ad_password_value("Pa$$ w0rd") == '"Pa$$ w0rd"'.encode("utf-16-le")
    assert ad_password_value('q"€') == b'"\x00q\x00"\x00\xac\x20"\x00'
    reset = ad_password_changes("new")
    assert reset == {"unicodePwd": [(MODIFY_REPLACE, [b'"\x00n\x00e\x00w\x00"\x00'])]}
    change = ad_password_changes("new", "old")
    assert change == {"unicodePwd": [(MODIFY_DELETE, ['"old"'.encode("utf-16-le")]),
                                     (MODIFY_ADD, ['"new"'.encode("utf-16-le")])]}


def test_ad_reset_sends_the_quoted_utf16_value_over_tls(slapd):
    """slapd with Microsoft's schema stores what AD would receive (it cannot bind with it)."""
    name = _uid()
    dn = slapd.add_ad_user(name)
    endpoint = _endpoint(slapd, "starttls", directory="ad",
                         user_dn_template=f"cn={{username}},{slapd.people_dn}")
    [result] = LDAPTarget().apply(endpoint, [Change(name, SPECIAL)], _admin(slapd), TIMEOUT)
    assert result.ok, result.error
    assert slapd.read(dn, "unicodePwd") == [ad_password_value(SPECIAL)]


def test_ad_refuses_to_send_unicodepwd_in_clear(slapd):
    name = _uid()
    dn = slapd.add_ad_user(name)
    endpoint = _endpoint(slapd, directory="ad",
                         user_dn_template=f"cn={{username}},{slapd.people_dn}")
    target = LDAPTarget()
    [admin_result] = target.apply(endpoint, [Change(name, "New-1!")], _admin(slapd), TIMEOUT)
    [self_result] = target.apply(endpoint, [Change(name, "New-1!", current_secret="x")], None,
                                 TIMEOUT)
    for result in (admin_result, self_result):
        assert isinstance(result.error, ChangeRefused) and "LDAPS" in str(result.error)
    assert slapd.read(dn, "unicodePwd") == []


def test_ssha_value_is_not_the_password(slapd):
    uid = _uid()
    dn = slapd.add_user(uid, "initial-1")
    LDAPTarget().apply(_endpoint(slapd), [Change(uid, SPECIAL)], _admin(slapd), TIMEOUT)
    [stored] = slapd.read(dn, "userPassword")
    assert SPECIAL.encode() not in stored
    assert base64.b64encode(SPECIAL.encode()) not in stored
