"""LDAP target against a real OpenLDAP slapd (tests/peers/slapd.py).

slapd cannot act as Active Directory: it stores a ``unicodePwd`` value (Microsoft's schema
is loaded) but does not treat it as a password, and it has no equality rule for it, so the
AD *self-service* delete-old/add-new cannot run against it. The AD path is therefore tested
for its encoding and modification shape, and the admin reset end to end as far as the
value that reaches the directory over StartTLS.

The target speaks LDAPS with certificate checks unless a device opts out; a relay
(tests/peers/tap.py) in front of slapd shows what actually went over the wire.
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket

import pytest
from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE
from ldap3.utils.dn import escape_rdn

from pamflow.platform import free_port
from pamflow.targets.base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    Endpoint,
    InvalidSetting,
    Login,
    TLSFailed,
    Unreachable,
)
from pamflow.targets.ldap import (
    LDAPTarget,
    UntrustedCertificate,
    ad_password_changes,
    ad_password_value,
)
from tests.peers.tap import Tap, is_tls_client_hello

SPECIAL = "a'b\"c $HOME `id` back\\slash 100% & | < > ; : * ( ) é€ ^!"
TIMEOUT = 5


def _uid() -> str:
    return f"u{secrets.token_hex(4)}"


def _endpoint(slapd, mode: str = "ldaps", *, address: str = "127.0.0.1", port: int | None = None,
              **settings) -> Endpoint:
    """``ldaps``: the default settings (no ``tls`` key) on the LDAPS port, trusting slapd's CA;
    ``starttls``: StartTLS on the plain port; ``none``: the explicit cleartext opt-in."""
    base = {"user_dn_template": f"uid={{username}},{slapd.people_dn}"}
    if mode == "ldaps":
        base.update(ca_certs_file=str(slapd.ca_cert))
        default_port = slapd.tls_port
    elif mode == "starttls":
        base.update(tls="starttls", ca_certs_file=str(slapd.ca_cert))
        default_port = slapd.port
    else:
        base.update(tls="none")
        default_port = slapd.port
    base.update(settings)
    return Endpoint(device_id=7, name="ldap01", address=address, port=port or default_port,
                    settings={k: v for k, v in base.items() if v is not None})


def _cleartext_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "cleartext" in r.getMessage()]


def _admin(slapd) -> Login:
    return Login(slapd.admin_dn, slapd.admin_password)


@pytest.mark.parametrize("tls", ["ldaps", "starttls", "none"])
def test_admin_change_then_new_binds_and_old_fails(slapd, tls, caplog):
    uid = _uid()
    dn = slapd.add_user(uid, "Old-pw-1")
    endpoint, target = _endpoint(slapd, tls), LDAPTarget()

    with caplog.at_level(logging.WARNING):
        [result] = target.apply(endpoint, [Change(uid, SPECIAL)], _admin(slapd), TIMEOUT)
    assert bool(_cleartext_warnings(caplog)) == (tls == "none")

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


def test_untrusted_certificate_is_refused_before_any_credential(slapd, caplog):
    uid = _uid()
    dn = slapd.add_user(uid, "initial-1")
    target = LDAPTarget()
    for tls in ("ldaps", "starttls"):
        server_port = _endpoint(slapd, tls).port
        with Tap("127.0.0.1", server_port) as tap:
            # no ca_certs_file: slapd's self-signed certificate is not in the system store
            endpoint = _endpoint(slapd, tls, port=tap.port, ca_certs_file=None)
            with pytest.raises(UntrustedCertificate) as info:
                target.verify(endpoint, Login(uid, "initial-1"), TIMEOUT)
            with pytest.raises(UntrustedCertificate) as applied:
                target.apply(endpoint, [Change(uid, "New-pw-1")], _admin(slapd), TIMEOUT)
            sent = tap.sent
        for error in (info.value, applied.value):
            assert "not trusted" in str(error) and "self-signed" in str(error)
            assert error.retryable is False and error.step == "connect"
            assert error.device == "ldap01"
        for secret in (b"initial-1", b"New-pw-1", slapd.admin_password.encode(),
                       slapd.admin_dn.encode()):
            assert secret not in sent
        assert slapd.can_bind(dn, "initial-1")

        # tls_validate: none is an opt-in, warned on every connection
        caplog.clear()
        insecure = _endpoint(slapd, tls, ca_certs_file=None, tls_validate="none")
        with caplog.at_level(logging.WARNING):
            assert target.verify(insecure, Login(uid, "initial-1"), TIMEOUT) is True
            assert target.verify(insecure, Login(uid, "initial-1"), TIMEOUT) is True
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "tls_validate is none" in w]) == 2
        assert all("ldap01" in w and "initial-1" not in w for w in warnings)


def test_default_settings_refuse_a_plain_ldap_port_without_sending_a_credential(slapd):
    uid = _uid()
    dn = slapd.add_user(uid, "initial-1")
    target = LDAPTarget()
    with Tap("127.0.0.1", slapd.port) as tap:  # slapd's plain LDAP listener
        endpoint = Endpoint(device_id=7, name="ldap01", address="127.0.0.1", port=tap.port,
                            settings={"user_dn_template": f"uid={{username}},{slapd.people_dn}",
                                      "ca_certs_file": str(slapd.ca_cert)})
        with pytest.raises(TLSFailed) as verified:
            target.verify(endpoint, Login(uid, "initial-1"), TIMEOUT)
        with pytest.raises(TLSFailed) as admin_apply:
            target.apply(endpoint, [Change(uid, "New-pw-1")], _admin(slapd), TIMEOUT)
        with pytest.raises(TLSFailed):
            target.apply(endpoint, [Change(uid, "New-pw-1", current_secret="initial-1")], None,
                         TIMEOUT)
        sent = tap.sent
        connections = tap.connections
    for error in (verified.value, admin_apply.value):
        assert error.retryable is False and error.step == "connect"
        assert "TLS" in str(error) and "ldap01" in str(error)
    # each connection opened with a TLS ClientHello; no LDAP message, no DN, no password
    assert connections == 3 and is_tls_client_hello(sent)
    for secret in (b"initial-1", b"New-pw-1", slapd.admin_password.encode(), uid.encode(),
                   slapd.admin_dn.encode()):
        assert secret not in sent
    assert slapd.can_bind(dn, "initial-1") and not slapd.can_bind(dn, "New-pw-1")


def test_certificate_for_another_host_is_refused(slapd):
    """127.0.0.2 reaches slapd through the relay, but its certificate names 127.0.0.1."""
    uid = _uid()
    slapd.add_user(uid, "initial-1")
    with Tap("127.0.0.1", slapd.tls_port, listen_host="127.0.0.2") as tap:
        endpoint = _endpoint(slapd, address="127.0.0.2", port=tap.port)
        with pytest.raises(UntrustedCertificate) as info:
            LDAPTarget().verify(endpoint, Login(uid, "initial-1"), TIMEOUT)
        assert b"initial-1" not in tap.sent
    assert "not trusted" in str(info.value) and "mismatch" in str(info.value)


def test_cleartext_is_an_explicit_opt_in_warned_on_every_connection(slapd, caplog):
    uid = _uid()
    dn = slapd.add_user(uid, "initial-1")
    target = LDAPTarget()
    with Tap("127.0.0.1", slapd.port) as tap, caplog.at_level(logging.WARNING):
        endpoint = _endpoint(slapd, "none", port=tap.port)
        assert target.verify(endpoint, Login(uid, "initial-1"), TIMEOUT) is True
        [result] = target.apply(endpoint, [Change(uid, "Clear-pw-1")], _admin(slapd), TIMEOUT)
        assert result.ok, result.error
        assert target.verify(endpoint, Login(uid, "Clear-pw-1"), TIMEOUT) is True
        assert dn.encode() in tap.sent  # it really was cleartext
    warnings = _cleartext_warnings(caplog)
    assert len(warnings) == 3  # one per connection
    for text in warnings:
        assert "ldap01" in text and "tls is none" in text
    for secret in ("initial-1", "Clear-pw-1", slapd.admin_password):
        assert secret not in caplog.text


@pytest.mark.parametrize("settings, named", [({"tls": "plain"}, "tls"),
                                             ({"tls": False}, "tls"),
                                             ({"tls_validate": "optional"}, "tls_validate"),
                                             ({"usernames_are_dns": "maybe"}, "usernames_are_dns")])
def test_unknown_security_settings_are_refused_before_connecting(slapd, settings, named):
    uid = _uid()
    slapd.add_user(uid, "initial-1")
    target = LDAPTarget()
    with Tap("127.0.0.1", slapd.port) as tap:
        endpoint = _endpoint(slapd, "none", port=tap.port, **settings)
        [result] = target.apply(endpoint, [Change(uid, "New-pw-1")], _admin(slapd), TIMEOUT)
        with pytest.raises(InvalidSetting) as info:
            target.verify(endpoint, Login(uid, "initial-1"), TIMEOUT)
        assert tap.connections == 0
    for error in (result.error, info.value):
        assert isinstance(error, InvalidSetting) and error.step == "validate"
        assert f"setting {named} " in str(error)


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
    endpoint = _endpoint(slapd, "none", directory="ad",
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


# -- account names -------------------------------------------------------------------------

def test_a_dn_shaped_username_is_a_name_not_a_dn(slapd):
    """An account imported as ``uid=victim,ou=people,...`` never resets the victim."""
    victim = _uid()
    victim_dn = slapd.add_user(victim, "Victim-pw-1")
    # an entry whose name literally is that text
    literal_dn = slapd.add_entry(f"uid={escape_rdn(victim_dn)},{slapd.people_dn}",
                                 ["inetOrgPerson"], {"uid": victim_dn, "cn": "x", "sn": "x"})
    target = LDAPTarget()
    for endpoint in (_endpoint(slapd, "starttls"),
                     _endpoint(slapd, "starttls", user_dn_template=None, search_base=slapd.suffix)):
        [result] = target.apply(endpoint, [Change(victim_dn, "Hijacked-1")], _admin(slapd),
                                TIMEOUT)
        assert result.ok, result.error  # the entry literally named so, and only it
        assert slapd.can_bind(literal_dn, "Hijacked-1")
        assert slapd.can_bind(victim_dn, "Victim-pw-1")
        assert not slapd.can_bind(victim_dn, "Hijacked-1")
        assert target.verify(endpoint, Login(victim_dn, "Victim-pw-1"), TIMEOUT) is False
        # the admin entry named the same way: no such account
        [admin_entry] = target.apply(endpoint, [Change(slapd.admin_dn, "Hijacked-2")],
                                     _admin(slapd), TIMEOUT)
        assert isinstance(admin_entry.error, ChangeRefused)
        assert "no such account" in str(admin_entry.error)
        assert slapd.can_bind(slapd.admin_dn, slapd.admin_password)
    # self-service with a DN-shaped name binds as the literal name too
    [self_result] = target.apply(_endpoint(slapd, "starttls"), [Change(victim_dn, "Hijacked-3",
                                                           current_secret="Victim-pw-1")],
                                 None, TIMEOUT)
    assert isinstance(self_result.error, AuthenticationFailed)
    assert slapd.can_bind(victim_dn, "Victim-pw-1")


def test_usernames_are_dns_only_below_the_device_base(slapd):
    victim = _uid()
    victim_dn = slapd.add_user(victim, "Victim-pw-1")
    target = LDAPTarget()
    for base in ({"search_base": slapd.people_dn}, {}):  # without it: the template's parent
        endpoint = _endpoint(slapd, "starttls", usernames_are_dns=True, **base)
        new = f"As-dn-{secrets.token_hex(3)}"
        ok, outside, bad, the_base = target.apply(
            endpoint, [Change(victim_dn, new), Change(slapd.admin_dn, "Hijacked-1"),
                       Change("uid=x,,ou=people", "Hijacked-2"),
                       Change(slapd.people_dn, "Hijacked-3")], _admin(slapd), TIMEOUT)
        assert ok.ok, ok.error
        assert slapd.can_bind(victim_dn, new)
        assert target.verify(endpoint, Login(victim_dn, new), TIMEOUT) is True
        for refused in (outside, bad, the_base):
            assert isinstance(refused.error, ChangeRefused) and refused.error.step == "validate"
        assert "not below" in str(outside.error) and "not a valid DN" in str(bad.error)
        assert slapd.can_bind(slapd.admin_dn, slapd.admin_password)
        with pytest.raises(ChangeRefused) as info:
            target.verify(endpoint, Login(slapd.admin_dn, slapd.admin_password), TIMEOUT)
        assert info.value.step == "validate" and slapd.admin_password not in str(info.value)
