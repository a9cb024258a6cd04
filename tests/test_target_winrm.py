"""WinRM target against a WS-Management endpoint that pywinrm talks to for real.

The endpoint (tests/peers/winrm_server.py) emulates a Windows host's account table; the
client side is the real pywinrm/requests/requests_ntlm stack over HTTP (Basic; NTLM with
message encryption) and HTTPS (Basic; NTLM with channel binding). HTTPS with certificate
validation is the default; HTTP is the explicit ``scheme: http`` opt-in. A relay
(tests/peers/tap.py) in front of the endpoint shows what actually went over the wire.
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
    InvalidSetting,
    Login,
    TLSFailed,
    Unreachable,
)
from pamflow.targets.winrm import RESET_SCRIPT, UntrustedCertificate, WinRMTarget
from tests.fixtures.winrm import ADMIN, ADMIN_PASSWORD
from tests.peers.tap import Tap, is_tls_client_hello
from tests.peers.winrm_server import WinRMServer

SPECIAL = "a'b\"c $HOME `whoami` back\\slash 100% & | < > ; : é€ ^!"
TIMEOUT = 10


def _name() -> str:
    return f"svc{secrets.token_hex(3)}"


def _endpoint(server: WinRMServer, transport: str = "ntlm", *, address: str = "127.0.0.1",
              port: int | None = None, **settings) -> Endpoint:
    """HTTPS: the default settings plus the endpoint's CA; HTTP: the ``scheme: http`` opt-in."""
    base = {"transport": transport}
    if server.https:
        base["ca_certs_file"] = str(server.cert_path)
    else:
        base["scheme"] = "http"
    base.update(settings)
    return Endpoint(device_id=1, name="win01", address=address, port=port or server.port,
                    settings={k: v for k, v in base.items() if v is not None})


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


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


def test_special_characters_each_survive(winrm_https):
    winrm_http = winrm_https
    endpoint, target = _endpoint(winrm_https, "basic"), WinRMTarget()
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


def test_batch_shares_one_command_and_reports_each_account(winrm_https):
    winrm_http = winrm_https
    endpoint, target = _endpoint(winrm_https), WinRMTarget()
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


def test_untrusted_certificate_is_refused_before_any_request(winrm_https, caplog):
    name = _name()
    winrm_https.add_account(name, "initial-1")
    target = WinRMTarget()
    before = winrm_https.requests
    with Tap("127.0.0.1", winrm_https.port) as tap:
        # no CA: the endpoint's self-signed certificate is not in certifi's bundle
        untrusted = _endpoint(winrm_https, "basic", port=tap.port, ca_certs_file=None)
        with pytest.raises(UntrustedCertificate) as verified:
            target.verify(untrusted, Login(name, "initial-1"), TIMEOUT)
        with pytest.raises(UntrustedCertificate) as applied:
            target.apply(untrusted, [Change(name, "New-1!")], _admin(), TIMEOUT)
        sent = tap.sent
    for error in (verified.value, applied.value):
        assert "not trusted" in str(error) and "self-signed" in str(error)
        assert error.retryable is False and error.step == "connect"  # nothing was sent
    assert winrm_https.requests == before
    for secret in ("initial-1", "New-1!", ADMIN_PASSWORD):
        assert secret.encode() not in sent and base64.b64encode(secret.encode()) not in sent
    assert winrm_https.password_of(name) == "initial-1"

    # ignoring the certificate is an opt-in, warned on every use
    caplog.clear()
    ignoring = _endpoint(winrm_https, "basic", ca_certs_file=None,
                         server_cert_validation="ignore")
    with caplog.at_level(logging.WARNING):
        assert target.verify(ignoring, Login(name, "initial-1"), TIMEOUT) is True
        assert target.verify(ignoring, Login(name, "initial-1"), TIMEOUT) is True
    warnings = _warnings(caplog, "server_cert_validation is ignore")
    assert len(warnings) == 2 and all("win01" in w for w in warnings)
    assert "initial-1" not in caplog.text


def test_default_settings_speak_https_and_validate(winrm_https):
    name = _name()
    winrm_https.add_account(name, "initial-1")
    endpoint = Endpoint(device_id=1, name="win01", address="127.0.0.1", port=winrm_https.port,
                        settings={"ca_certs_file": str(winrm_https.cert_path)})
    target = WinRMTarget()
    [result] = target.apply(endpoint, [Change(name, SPECIAL)], _admin(), TIMEOUT)
    assert result.ok, result.error
    assert target.verify(endpoint, Login(name, SPECIAL), TIMEOUT) is True
    assert winrm_https.password_of(name) == SPECIAL


def test_default_settings_refuse_a_plain_http_listener_before_sending_credentials(winrm_http):
    name = _name()
    winrm_http.add_account(name, "initial-1")
    target = WinRMTarget()
    before_requests, before_commands = winrm_http.requests, len(winrm_http.commands)
    with Tap("127.0.0.1", winrm_http.port) as tap:
        endpoint = Endpoint(device_id=1, name="win01", address="127.0.0.1", port=tap.port,
                            settings={"transport": "basic"})
        with pytest.raises(TLSFailed) as verified:
            target.verify(endpoint, Login(name, "initial-1"), TIMEOUT)
        with pytest.raises(TLSFailed) as applied:
            target.apply(endpoint, [Change(name, "New-1!")], _admin(), TIMEOUT)
        with pytest.raises(TLSFailed):
            target.apply(endpoint, [Change(name, "New-1!", current_secret="initial-1")], None,
                         TIMEOUT)
        sent, connections = tap.sent, tap.connections
    for error in (verified.value, applied.value):
        assert error.retryable is False and error.step == "connect"
        assert "HTTPS" in str(error) and "win01" in str(error)
    assert connections >= 3 and is_tls_client_hello(sent)
    assert b"Authorization" not in sent and b"POST" not in sent
    for secret in ("initial-1", "New-1!", ADMIN_PASSWORD):
        assert secret.encode() not in sent and base64.b64encode(secret.encode()) not in sent
    assert winrm_http.requests == before_requests
    assert len(winrm_http.commands) == before_commands
    assert winrm_http.password_of(name) == "initial-1"


def test_certificate_for_another_host_is_refused(winrm_https):
    """127.0.0.2 reaches the endpoint through the relay; its certificate names 127.0.0.1."""
    name = _name()
    winrm_https.add_account(name, "initial-1")
    before = winrm_https.requests
    with Tap("127.0.0.1", winrm_https.port, listen_host="127.0.0.2") as tap:
        endpoint = _endpoint(winrm_https, "basic", address="127.0.0.2", port=tap.port)
        with pytest.raises(UntrustedCertificate) as info:
            WinRMTarget().verify(endpoint, Login(name, "initial-1"), TIMEOUT)
    assert "not trusted" in str(info.value) and "mismatch" in str(info.value)
    assert winrm_https.requests == before


@pytest.mark.parametrize("transport, said", [("basic", "credentials travel in cleartext"),
                                             ("ntlm", "server is not authenticated")])
def test_http_is_an_explicit_opt_in_warned_on_every_use(winrm_http, caplog, transport, said):
    name = _name()
    winrm_http.add_account(name, "initial-1")
    endpoint, target = _endpoint(winrm_http, transport), WinRMTarget()
    assert endpoint.settings["scheme"] == "http"
    with caplog.at_level(logging.WARNING):
        assert target.verify(endpoint, Login(name, "initial-1"), TIMEOUT) is True
        [result] = target.apply(endpoint, [Change(name, "Clear-1!")], _admin(), TIMEOUT)
        assert result.ok, result.error
        assert target.verify(endpoint, Login(name, "Clear-1!"), TIMEOUT) is True
    warnings = _warnings(caplog, "scheme is http")
    assert len(warnings) == 3
    assert all("win01" in w and said in w for w in warnings)
    for secret in ("initial-1", "Clear-1!", ADMIN_PASSWORD):
        assert secret not in caplog.text


@pytest.mark.parametrize("settings, named", [({"scheme": "ftp"}, "scheme"),
                                             ({"server_cert_validation": "maybe"},
                                              "server_cert_validation"),
                                             ({"transport": "telnet"}, "transport")])
def test_unknown_settings_are_refused_before_connecting(winrm_https, settings, named):
    name = _name()
    winrm_https.add_account(name, "initial-1")
    target = WinRMTarget()
    with Tap("127.0.0.1", winrm_https.port) as tap:
        endpoint = _endpoint(winrm_https, port=tap.port, **settings)
        [result] = target.apply(endpoint, [Change(name, "New-1!")], _admin(), TIMEOUT)
        with pytest.raises(InvalidSetting) as info:
            target.verify(endpoint, Login(name, "initial-1"), TIMEOUT)
        assert tap.connections == 0
    for error in (result.error, info.value):
        assert isinstance(error, InvalidSetting) and error.step == "validate"
        assert f"setting {named} " in str(error)


def test_account_names_never_reach_a_script_or_command_line(winrm_https):
    """Names go base64 on stdin; names Windows forbids are refused before anything is sent."""
    target = WinRMTarget()
    endpoint = _endpoint(winrm_https, scheme="https", ca_certs_file=None,  # the older spelling
                         ca_trust_path=str(winrm_https.cert_path))
    odd = [f"svc$(whoami){secrets.token_hex(2)}", f"svc`whoami`'{secrets.token_hex(2)}",
           f"svc%PATH% & whoami{secrets.token_hex(2)}", f"svc' -and (whoami) #{secrets.token_hex(2)}"]
    for name in odd:
        winrm_https.add_account(name, "initial-1")
    local = [f".\\{odd[0]}", f"WIN01\\{odd[1]}"]  # prefixes naming this very host
    hostile = ['x"; whoami #', "Administrator,group", "OTHERHOST/Administrator",
               "svc\r\nwhoami", "a|whoami", "x\0y"]
    domain = ["CORP\\Administrator", "win02\\Administrator"]  # not this host's accounts
    before = len(winrm_https.commands)

    results = target.apply(endpoint, [Change(n, "New-1!") for n in odd + hostile + domain]
                           + [Change(n, "New-2!") for n in local], _admin(), TIMEOUT)

    assert [r.ok for r in results] == ([True] * len(odd) + [False] * len(hostile + domain)
                                       + [True] * len(local))
    assert winrm_https.password_of(odd[0]) == winrm_https.password_of(odd[1]) == "New-2!"
    for name in odd[2:]:
        assert winrm_https.password_of(name) == "New-1!"
    for result in results[len(odd):len(odd) + len(hostile + domain)]:
        assert isinstance(result.error, ChangeRefused) and result.error.step == "validate"
        assert ("not a valid Windows account name" in str(result.error)
                if result.username in hostile else "not a local account" in str(result.error))
    assert winrm_https.password_of(ADMIN) == ADMIN_PASSWORD
    [record] = winrm_https.commands[before:]  # one constant script for the whole batch
    assert record.script == RESET_SCRIPT
    for name in odd + hostile + domain:
        assert name not in record.command_line
        assert base64.b64encode(name.encode()).decode() not in record.command_line


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

    assert url(0) == "https://10.0.0.5:5986/wsman"
    assert url(5986) == "https://10.0.0.5:5986/wsman"
    assert url(5985) == "https://10.0.0.5:5986/wsman"  # the HTTP default port follows HTTPS
    assert url(15985) == "https://10.0.0.5:15985/wsman"
    assert url(0, scheme="https") == "https://10.0.0.5:5986/wsman"
    assert url(5985, scheme="https", port=5985) == "https://10.0.0.5:5985/wsman"
    assert url(22, port=8443, scheme="https", path="custom") == "https://10.0.0.5:8443/custom"
    assert url(0, scheme="http") == "http://10.0.0.5:5985/wsman"
    assert url(5986, scheme="HTTP") == "http://10.0.0.5:5985/wsman"


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
