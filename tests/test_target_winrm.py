"""WinRM target against a WS-Management endpoint that pywinrm talks to for real.

The endpoint (tests/peers/winrm_server.py) emulates a Windows host's account table; the
client side is the real pywinrm/requests/requests_ntlm stack over HTTP (Basic; NTLM with
message encryption) and HTTPS (Basic; NTLM with channel binding).
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket

import pytest

from pamflow.platform import free_port
from pamflow.targets.base import (
    AuthenticationFailed,
    Change,
    ChangeRefused,
    Endpoint,
    Login,
    Unreachable,
)
from pamflow.targets.winrm import WinRMTarget
from tests.fixtures.winrm import ADMIN, ADMIN_PASSWORD
from tests.peers.winrm_server import WinRMServer

SPECIAL = "a'b\"c $HOME `whoami` back\\slash 100% & | < > ; : é€ ^!"
TIMEOUT = 10


def _name() -> str:
    return f"svc{secrets.token_hex(3)}"


def _endpoint(server: WinRMServer, transport: str = "ntlm", **settings) -> Endpoint:
    base = {"scheme": server.scheme, "transport": transport}
    if server.https:
        base["ca_trust_path"] = str(server.cert_path)
    base.update(settings)
    return Endpoint(device_id=1, name="win01", address="127.0.0.1", port=server.port,
                    settings=base)


def _admin() -> Login:
    return Login(ADMIN, ADMIN_PASSWORD)


def _assert_no_secret_on_command_lines(server: WinRMServer, *secrets_: str) -> None:
    assert server.commands, "the server recorded no command"
    for record in server.commands:
        for secret in secrets_:
            encoded = base64.b64encode(secret.encode()).decode()
            assert secret not in record.command_line and encoded not in record.command_line
            assert record.script is None or (secret not in record.script
                                             and encoded not in record.script)


@pytest.fixture(params=["http-basic", "http-ntlm", "https-basic", "https-ntlm"])
def target_server(request, winrm_http, winrm_https):
    scheme, transport = request.param.split("-")
    server = winrm_https if scheme == "https" else winrm_http
    return server, _endpoint(server, transport)


def test_change_then_new_logs_in_and_old_fails(target_server):
    server, endpoint = target_server
    name, old = _name(), "Old-pa55word"
    server.add_account(name, old)
    target = WinRMTarget()
    before = len(server.commands)

    results = target.apply(endpoint, [Change(name, SPECIAL)], _admin(), TIMEOUT)

    assert [r.ok for r in results] == [True], results[0].error
    assert server.password_of(name) == SPECIAL
    assert target.verify(endpoint, Login(name, SPECIAL), TIMEOUT) is True
    assert target.verify(endpoint, Login(name, old), TIMEOUT) is False
    change_cmd = server.commands[before]
    assert change_cmd.user == ADMIN and "SetPassword(" in (change_cmd.script or "")
    assert server.commands[-1].command == "whoami"
    _assert_no_secret_on_command_lines(server, SPECIAL, old, ADMIN_PASSWORD)


def test_special_characters_each_survive(winrm_http):
    endpoint, target = _endpoint(winrm_http, "basic"), WinRMTarget()
    specials = ["quote'single", 'quote"double', "dollar$var", "back`tick", "back\\slash",
                "with space", "per%cent%", "colon:and;semi", "new\nline"]
    names = [_name() for _ in specials]
    for name in names:
        winrm_http.add_account(name, "initial-1")
    results = target.apply(endpoint, [Change(n, p) for n, p in zip(names, specials, strict=True)],
                           _admin(), TIMEOUT)
    assert all(r.ok for r in results), [r.error for r in results]
    for name, password in zip(names, specials, strict=True):
        assert winrm_http.password_of(name) == password
        assert target.verify(endpoint, Login(name, password), TIMEOUT)
    _assert_no_secret_on_command_lines(winrm_http, *specials)


def test_batch_shares_one_command_and_reports_each_account(winrm_http):
    endpoint, target = _endpoint(winrm_http), WinRMTarget()
    good = [_name(), _name()]
    for name in good:
        winrm_http.add_account(name, "initial-1")
    before = len(winrm_http.commands)
    changes = [Change(good[0], "New-1!"), Change("nosuchuser", "New-2!"),
               Change(good[1], "New-3!"), Change("bad/name", "New-4!")]

    results = target.apply(endpoint, changes, _admin(), TIMEOUT)

    assert [r.username for r in results] == [c.username for c in changes]
    assert [r.ok for r in results] == [True, False, True, False]
    assert isinstance(results[1].error, ChangeRefused)
    assert "could not be found" in str(results[1].error)
    assert "nosuchuser" in str(results[1].error) and "win01" in str(results[1].error)
    assert isinstance(results[3].error, ChangeRefused)
    assert len(winrm_http.commands) == before + 1  # one PowerShell for the whole batch
    assert winrm_http.password_of(good[0]) == "New-1!"
    assert winrm_http.password_of(good[1]) == "New-3!"


def test_self_service_change_without_admin(winrm_https):
    endpoint, target = _endpoint(winrm_https, "ntlm"), WinRMTarget()
    name = _name()
    winrm_https.add_account(name, "Current-1")

    ok, wrong = target.apply(endpoint, [Change(name, SPECIAL, current_secret="Current-1"),
                                        Change(name, "never", current_secret="not-it")],
                             None, TIMEOUT)

    assert ok.ok, ok.error
    assert isinstance(wrong.error, AuthenticationFailed)
    assert winrm_https.password_of(name) == SPECIAL
    change = [c for c in winrm_https.commands if c.user == name][0]
    assert "ChangePassword(" in change.script
    _assert_no_secret_on_command_lines(winrm_https, SPECIAL, "Current-1")


def test_wrong_admin_password_is_authentication_failed(winrm_http):
    name = _name()
    winrm_http.add_account(name, "initial-1")
    for transport in ("basic", "ntlm"):
        with pytest.raises(AuthenticationFailed) as info:
            WinRMTarget().apply(_endpoint(winrm_http, transport), [Change(name, "New-1!")],
                                Login(ADMIN, "wrong-admin-pw"), TIMEOUT)
        assert "wrong-admin-pw" not in str(info.value) and "New-1!" not in str(info.value)
        assert "win01" in str(info.value) and ADMIN in str(info.value)
    assert winrm_http.password_of(name) == "initial-1"


def test_closed_port_is_unreachable():
    endpoint = Endpoint(device_id=1, name="win01", address="127.0.0.1", port=free_port(),
                        settings={"transport": "ntlm"})
    target = WinRMTarget()
    with pytest.raises(Unreachable) as info:
        target.apply(endpoint, [Change("someone", "New-1!")], _admin(), 3)
    assert info.value.retryable and "New-1!" not in str(info.value)
    with pytest.raises(Unreachable):
        target.verify(endpoint, Login("someone", "New-1!"), 3)


def test_silent_host_times_out_as_unreachable():
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = Endpoint(device_id=1, name="win01", address="127.0.0.1",
                            port=listener.getsockname()[1], settings={"transport": "basic"})
        with pytest.raises(Unreachable) as info:
            WinRMTarget().verify(endpoint, Login("someone", "pw"), 1)
    assert "timed out" in str(info.value)


def test_https_certificate_is_validated(winrm_https):
    name = _name()
    winrm_https.add_account(name, "initial-1")
    target = WinRMTarget()
    untrusted = _endpoint(winrm_https, "basic", ca_trust_path=None)
    with pytest.raises(Unreachable) as info:
        target.verify(untrusted, Login(name, "initial-1"), TIMEOUT)
    assert info.value.retryable is False  # a certificate problem does not heal by retrying
    ignoring = _endpoint(winrm_https, "basic", ca_trust_path=None,
                         server_cert_validation="ignore")
    assert target.verify(ignoring, Login(name, "initial-1"), TIMEOUT) is True


def test_account_without_remote_shell_right_verifies_by_authentication(winrm_http):
    name = _name()
    winrm_http.add_account(name, "initial-1", remote=False)
    endpoint, target = _endpoint(winrm_http), WinRMTarget()
    assert target.verify(endpoint, Login(name, "initial-1"), TIMEOUT) is True
    assert target.verify(endpoint, Login(name, "wrong"), TIMEOUT) is False


def test_refusal_errors_and_logs_carry_no_secret(caplog):
    server = WinRMServer.start(min_password_length=len(SPECIAL) + 1)
    try:
        server.add_account(ADMIN, ADMIN_PASSWORD, admin=True)
        name = _name()
        server.add_account(name, "initial-1")
        endpoint, target = _endpoint(server), WinRMTarget()
        with caplog.at_level(logging.DEBUG):
            [result] = target.apply(endpoint, [Change(name, SPECIAL)], _admin(), TIMEOUT)
            with pytest.raises(AuthenticationFailed) as info:
                target.apply(endpoint, [Change(name, SPECIAL)], Login(ADMIN, SPECIAL), TIMEOUT)
        assert isinstance(result.error, ChangeRefused)
        assert "password policy" in str(result.error)
        assert name in str(result.error) and "win01" in str(result.error)
        for text in (str(result.error), repr(result), str(info.value), caplog.text):
            assert SPECIAL not in text and ADMIN_PASSWORD not in text
            assert base64.b64encode(SPECIAL.encode()).decode() not in text
        assert server.password_of(name) == "initial-1"
    finally:
        server.stop()


def test_endpoint_url_from_settings():
    def url(device_port: int, **settings) -> str:
        return WinRMTarget.url(Endpoint(1, "w", "10.0.0.5", device_port, settings))

    assert url(0) == "http://10.0.0.5:5985/wsman"
    assert url(5986) == "https://10.0.0.5:5986/wsman"
    assert url(0, scheme="https") == "https://10.0.0.5:5986/wsman"
    assert url(5985, scheme="https") == "https://10.0.0.5:5986/wsman"
    assert url(5985, scheme="https", port=5985) == "https://10.0.0.5:5985/wsman"
    assert url(22, port=8443, scheme="https", path="custom") == "https://10.0.0.5:8443/custom"


def test_admin_without_rights_gets_each_change_refused(winrm_http):
    target, endpoint = WinRMTarget(), _endpoint(winrm_http)
    victim, plain, no_shell = _name(), _name(), _name()
    winrm_http.add_account(victim, "initial-1")
    winrm_http.add_account(plain, "Plain-1")  # not an administrator
    winrm_http.add_account(no_shell, "NoShell-1", admin=True, remote=False)
    for admin in (Login(plain, "Plain-1"), Login(no_shell, "NoShell-1")):
        [result] = target.apply(endpoint, [Change(victim, "New-1!")], admin, TIMEOUT)
        assert isinstance(result.error, ChangeRefused)
        assert "denied" in str(result.error) and victim in str(result.error)
    assert winrm_http.password_of(victim) == "initial-1"
