"""A local WS-Management endpoint that emulates a Windows host for pywinrm.

Plain code (no pytest) so benchmarks can start the same server as the tests. It speaks the
real protocol to the real client library: SOAP 1.2 over HTTP or HTTPS on 127.0.0.1, the
WinRS actions Create (shell), Command, Send (stdin), Receive, Signal and Delete, Basic
authentication and NTLM authentication (pyspnego's acceptor, with MS-WSMV message
encryption over HTTP and channel binding over HTTPS), and a self-signed certificate made
with ``cryptography`` for HTTPS.

What it cannot do is run Windows programs, so it interprets the few command lines pamflow
sends: ``whoami`` and PowerShell scripts given with ``-EncodedCommand`` that reset
(``SetPassword``) or change (``ChangePassword``) local account passwords, reading the
account names and passwords base64-encoded, one per line, from the command's stdin stream.
The accounts are an in-memory table. Every command line received is recorded in
``commands`` (with the decoded script) so tests can check that no secret ever travelled on
a command line; stdin contents are never recorded.

Usage::

    server = WinRMServer.start(https=False)
    server.add_account("Administrator", "Adm1n!", admin=True)
    ...  # pywinrm against server.url
    server.stop()
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import shutil
import ssl
import struct
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from tests.peers.tls import self_signed

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_COMMAND = f"{SHELL_URI}/Command"
ACTION_SEND = f"{SHELL_URI}/Send"
ACTION_RECEIVE = f"{SHELL_URI}/Receive"
ACTION_SIGNAL = f"{SHELL_URI}/Signal"
STATE_DONE = f"{SHELL_URI}/CommandState/Done"
STATE_RUNNING = f"{SHELL_URI}/CommandState/Running"
ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"

# Windows error texts the emulator answers with (as ADSI reports them).
E_NO_USER = "The user name could not be found."
E_DENIED = "Access is denied."
E_BAD_OLD = "The specified network password is not correct."
E_POLICY = ("The password does not meet the password policy requirements. Check the minimum "
            "password length, password complexity and password history requirements.")

# pyspnego's NTLM acceptor reads its credential store from the process-wide NTLM_USER_FILE;
# each server has its own file, so acceptor steps are serialised with the variable set.
_NTLM_LOCK = threading.Lock()


@dataclass
class WindowsAccount:
    """A local account of the emulated host."""

    name: str
    password: str = field(repr=False)
    admin: bool = False  # member of Administrators: may reset others' passwords
    remote: bool = True  # may open a WinRM shell (Administrators / Remote Management Users)


@dataclass
class CommandRecord:
    """A command line the server received (never its stdin)."""

    user: str
    command: str
    arguments: str
    script: str | None = None  # the decoded -EncodedCommand script, if any
    exit_code: int | None = None

    @property
    def command_line(self) -> str:
        return f"{self.command} {self.arguments}".strip()


@dataclass
class _Command:
    record: CommandRecord
    stdin: bytearray = field(default_factory=bytearray)
    stdout: bytes = b""
    stderr: bytes = b""
    done: bool = False
    delivered: bool = False
    needs_stdin: bool = False


@dataclass
class _Shell:
    user: str
    commands: dict[str, _Command] = field(default_factory=dict)


def _self_signed_cert(workdir: Path) -> tuple[Path, Path, bytes]:
    """A P-256 self-signed certificate for 127.0.0.1/localhost: (cert, key, DER)."""
    return self_signed(workdir, "winrm", common_name="localhost", key_type="ec")


class _Handler(http.server.BaseHTTPRequestHandler):
    """One TCP connection: NTLM authenticates the connection, so its context lives here."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise each request/response stalls on delayed ACK
    server: _HTTPServer

    def setup(self) -> None:
        if self.server.ssl_context is not None:  # TLS handshake in this connection's thread
            self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()
        self._ntlm = None
        self._ntlm_user: str | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    # -- HTTP ----------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].rstrip("/") != "/wsman":
            return self._reply(404, b"", "text/plain")
        emulator = self.server.emulator
        user = self._authenticate()
        if user is None:
            return
        encrypted = "multipart/encrypted" in (self.headers.get("Content-Type") or "")
        if encrypted:
            try:
                body = self._decrypt(body)
            except Exception:
                return self._reply(400, b"", "text/plain")
        elif (body and self._ntlm is not None and not self.server.https
              and not emulator.allow_unencrypted):
            return self._reply(401, b"", "text/plain", self._challenge_headers())
        if not body:  # pywinrm's empty message that sets up encryption
            return self._reply(200, b"", "application/soap+xml;charset=UTF-8")
        status, answer = emulator.handle_soap(user, body)
        if encrypted:
            return self._reply(status, self._encrypt(answer),
                               f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";'
                               'boundary="Encrypted Boundary"')
        self._reply(status, answer, "application/soap+xml;charset=UTF-8")

    def _reply(self, status: int, body: bytes, ctype: str,
               headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for key, value in headers or []:
            self.send_header(key, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _challenge_headers(self) -> list[tuple[str, str]]:
        headers = []
        if "ntlm" in self.server.emulator.auth:
            headers.append(("WWW-Authenticate", "Negotiate"))
        if "basic" in self.server.emulator.auth:
            headers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        return headers

    def _deny(self, headers: list[tuple[str, str]] | None = None) -> None:
        self._reply(401, b"", "text/plain", headers if headers is not None
                    else self._challenge_headers())

    # -- authentication ------------------------------------------------------------------
    def _authenticate(self) -> str | None:
        """The authenticated account name, or None after answering 401."""
        emulator = self.server.emulator
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and "basic" in emulator.auth:
            if not self.server.https and not emulator.allow_unencrypted:
                self._deny()
                return None
            try:
                name, _, password = base64.b64decode(token).decode("utf-8").partition(":")
            except Exception:
                self._deny()
                return None
            account = emulator.login(name, password)
            if account is None:
                self._deny()
                return None
            return account.name
        if scheme in ("negotiate", "ntlm") and "ntlm" in emulator.auth:
            return self._ntlm_step(scheme, base64.b64decode(token))
        if self._ntlm_user is not None:  # an NTLM-authenticated connection
            return self._ntlm_user
        self._deny()
        return None

    def _ntlm_step(self, scheme: str, token: bytes) -> str | None:
        import spnego

        emulator = self.server.emulator
        message_type = struct.unpack("<I", token[8:12])[0] if len(token) >= 12 else 0
        label = "Negotiate" if scheme == "negotiate" else "NTLM"
        with _NTLM_LOCK:
            previous = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = str(emulator.ntlm_file)
            try:
                if message_type == 1:
                    self._ntlm_user = None
                    self._ntlm = spnego.server(
                        hostname=emulator.hostname, service="http", protocol="ntlm",
                        options=spnego.NegotiateOptions.use_ntlm,
                        channel_bindings=self.server.channel_bindings)
                    challenge = self._ntlm.step(token)
                    self._deny([("WWW-Authenticate",
                                 f"{label} {base64.b64encode(challenge).decode()}")])
                    return None
                if message_type == 3 and self._ntlm is not None:
                    self._ntlm.step(token)
                    principal = self._ntlm.client_principal or ""
                    account = emulator.account(principal)
                    if account is None:
                        raise ValueError("unknown account")
                    self._ntlm_user = account.name
                    return account.name
            except Exception:
                self._ntlm = None
                self._ntlm_user = None
            finally:
                if previous is None:
                    os.environ.pop("NTLM_USER_FILE", None)
                else:
                    os.environ["NTLM_USER_FILE"] = previous
        self._deny()
        return None

    # -- MS-WSMV 2.2.9.1.1 message encryption --------------------------------------------
    def _decrypt(self, body: bytes) -> bytes:
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        message = b""
        for i in range(0, len(parts) - 1, 2):
            header, payload = parts[i].strip(), parts[i + 1]
            expected = int(header.split(b"Length=")[1])
            if payload.endswith(BOUNDARY + b"--\r\n"):
                payload = payload[: -len(BOUNDARY + b"--\r\n")]
            data = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
            sig_len = struct.unpack("<i", data[:4])[0]
            plain = self._ntlm.unwrap(data[4:4 + sig_len] + data[4 + sig_len:]).data
            if len(plain) != expected:
                raise ValueError("encrypted length mismatch")
            message += plain
        return message

    def _encrypt(self, message: bytes) -> bytes:
        wrapped = self._ntlm.wrap(message, encrypt=True).data
        signature, sealed = wrapped[:16], wrapped[16:]
        return (BOUNDARY + b"\r\n\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
                b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
                + str(len(message)).encode() + b"\r\n" + BOUNDARY + b"\r\n"
                b"\tContent-Type: application/octet-stream\r\n"
                + struct.pack("<i", len(signature)) + signature + sealed
                + BOUNDARY + b"--\r\n")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: WinRMServer
    ssl_context: ssl.SSLContext | None = None
    channel_bindings = None
    https = False


class WinRMServer:
    """The emulated Windows host and its WS-Management listener."""

    def __init__(self, *, https: bool = False, auth: tuple[str, ...] = ("basic", "ntlm"),
                 hostname: str = "WIN-PAMFLOW", allow_unencrypted: bool = True,
                 min_password_length: int = 0, operation_wait: float = 5.0) -> None:
        self.https = https
        self.auth = tuple(a.lower() for a in auth)
        self.hostname = hostname.upper()
        self.allow_unencrypted = allow_unencrypted
        self.min_password_length = min_password_length
        self.operation_wait = operation_wait  # longest a Receive waits for output
        self.accounts: dict[str, WindowsAccount] = {}
        self.commands: list[CommandRecord] = []
        self.requests = 0
        self._shells: dict[str, _Shell] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.workdir = Path(tempfile.mkdtemp(prefix="pamflow-winrm-"))
        self.ntlm_file = self.workdir / "ntlm_users"
        self.ntlm_file.write_text("")
        self.cert_path: Path | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------
    @classmethod
    def start(cls, **kwargs) -> WinRMServer:
        server = cls(**kwargs)
        server._serve()
        return server

    def _serve(self) -> None:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.emulator = self
        httpd.https = self.https
        if self.https:
            import spnego.channel_bindings

            cert, key, der = _self_signed_cert(self.workdir)
            self.cert_path = cert
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            httpd.ssl_context = ctx
            # RFC 5929 tls-server-end-point, as requests_ntlm computes it (SHA-256 cert)
            httpd.channel_bindings = spnego.channel_bindings.GssChannelBindings(
                application_data=b"tls-server-end-point:" + hashlib.sha256(der).digest())
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="winrm-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/wsman"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the account table ---------------------------------------------------------------
    def add_account(self, name: str, password: str, *, admin: bool = False,
                    remote: bool = True) -> WindowsAccount:
        with self._lock:
            account = WindowsAccount(name, password, admin=admin, remote=remote)
            self.accounts[name.lower()] = account
            self._write_ntlm_file()
            return account

    def password_of(self, name: str) -> str:
        with self._lock:
            return self.accounts[name.lower()].password

    def account(self, principal: str) -> WindowsAccount | None:
        """The local account named by ``user``, ``.\\user``, ``HOST\\user`` or ``user@HOST``."""
        name = principal
        if "\\" in name:
            domain, name = name.split("\\", 1)
            if domain not in (".", "") and domain.upper() != self.hostname:
                return None
        elif "@" in name:
            name, domain = name.split("@", 1)
            if domain.upper() != self.hostname:
                return None
        return self.accounts.get(name.lower())

    def login(self, principal: str, password: str) -> WindowsAccount | None:
        with self._lock:
            account = self.account(principal)
            return account if account is not None and account.password == password else None

    def _set_password(self, account: WindowsAccount, password: str) -> None:
        account.password = password
        self._write_ntlm_file()

    def _write_ntlm_file(self) -> None:
        """smbpasswd format (NT hash), so passwords may hold any character, ':' included."""
        from spnego._ntlm_raw.crypto import ntowfv1

        lines = []
        for account in self.accounts.values():
            nt = base64.b16encode(ntowfv1(account.password)).decode()
            for prefix in ("", f"{self.hostname}\\", ".\\"):
                lines.append(f"{prefix}{account.name}:1000:{'0' * 32}:{nt}:[U]:LCT-00000000")
        tmp = self.ntlm_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.ntlm_file)

    # -- WS-Management -------------------------------------------------------------------
    def handle_soap(self, user: str, body: bytes) -> tuple[int, bytes]:
        """Answer one WS-Management request from the authenticated ``user``."""
        with self._lock:
            self.requests += 1
        try:
            return self._dispatch(user, ET.fromstring(body))
        except (ET.ParseError, AttributeError, ValueError, TypeError):
            return 400, self._fault("", "s:Sender", "w:SchemaValidationError", 2150858817,
                                    "The SOAP XML in the message does not match the schema.")

    def _dispatch(self, user: str, root: ET.Element) -> tuple[int, bytes]:
        header = root.find("s:Header", NS)
        request_body = root.find("s:Body", NS)
        action = (header.findtext("a:Action", "", NS) or "").strip()
        message_id = (header.findtext("a:MessageID", "", NS) or "").strip()
        shell_id = None
        for selector in header.findall("w:SelectorSet/w:Selector", NS):
            if selector.get("Name") == "ShellId":
                shell_id = (selector.text or "").strip()
        timeout = header.findtext("w:OperationTimeout", "PT20S", NS)
        wait = min(self.operation_wait, _duration(timeout))
        with self._lock:
            account = self.accounts.get(user.lower())
            if account is None or not account.remote:
                return 500, self._fault(message_id, "s:Sender", "w:AccessDenied", 5, E_DENIED)
        if action == ACTION_CREATE:
            shell_id = str(uuid.uuid4()).upper()
            with self._lock:
                self._shells[shell_id] = _Shell(user=user)
            return 200, self._envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", message_id,
                f"<x:ResourceCreated><a:Address>{escape(self.url)}</a:Address>"
                "<a:ReferenceParameters><w:ResourceURI>"
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
                f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector>'
                "</w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
                f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId>"
                f"<rsp:Owner>{escape(self.hostname.lower())}\\{escape(user)}</rsp:Owner>"
                "<rsp:InputStreams>stdin</rsp:InputStreams>"
                "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>")
        with self._lock:
            shell = self._shells.get(shell_id or "")
        if shell is None or shell.user.lower() != user.lower():
            return 500, self._fault(message_id, "s:Sender", "w:InvalidSelectors", 2150858843,
                                    "The request for the Windows Remote Shell with ShellId "
                                    f"{shell_id} failed because the shell was not found.")
        if action == ACTION_DELETE:
            with self._lock:
                self._shells.pop(shell_id, None)
            return 200, self._envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", message_id, "")
        if action == ACTION_COMMAND:
            line = request_body.find("rsp:CommandLine", NS)
            command = (line.findtext("rsp:Command", "", NS) or "").strip()
            arguments = " ".join((a.text or "") for a in line.findall("rsp:Arguments", NS))
            command_id = str(uuid.uuid4()).upper()
            cmd = self._start_command(user, command, arguments)
            with self._lock:
                shell.commands[command_id] = cmd
                self.commands.append(cmd.record)
            return 200, self._envelope(
                f"{SHELL_URI}/CommandResponse", message_id,
                f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId>"
                "</rsp:CommandResponse>")
        if action == ACTION_SEND:
            stream = request_body.find("rsp:Send/rsp:Stream", NS)
            cmd = shell.commands.get(stream.get("CommandId", ""))
            if cmd is None:
                return 500, self._fault(message_id, "s:Sender", "w:InvalidParameter", 87,
                                        "The parameter is incorrect.")
            data = base64.b64decode(stream.text or "")
            with self._lock:
                cmd.stdin.extend(data)
                end = stream.get("End", "false").lower() == "true"
            if end and cmd.needs_stdin and not cmd.done:
                self._run_with_stdin(cmd)
            return 200, self._envelope(f"{SHELL_URI}/SendResponse", message_id,
                                       "<rsp:SendResponse/>")
        if action == ACTION_RECEIVE:
            desired = request_body.find("rsp:Receive/rsp:DesiredStream", NS)
            command_id = desired.get("CommandId", "")
            cmd = shell.commands.get(command_id)
            if cmd is None:
                return 500, self._fault(message_id, "s:Sender", "w:InvalidParameter", 87,
                                        "The parameter is incorrect.")
            with self._changed:
                self._changed.wait_for(lambda: cmd.done, timeout=wait)
                if not cmd.done:
                    return 500, self._fault(
                        message_id, "s:Receiver", "w:TimedOut", 2150858793,
                        "The WS-Management service cannot complete the operation within the "
                        "time specified in OperationTimeout.")
                first = not cmd.delivered
                cmd.delivered = True
            streams = []
            if first:
                for name, data in (("stdout", cmd.stdout), ("stderr", cmd.stderr)):
                    if data:
                        streams.append(f'<rsp:Stream Name="{name}" CommandId="{command_id}">'
                                       f"{base64.b64encode(data).decode()}</rsp:Stream>")
            streams += [f'<rsp:Stream Name="{n}" CommandId="{command_id}" End="true"></rsp:Stream>'
                        for n in ("stdout", "stderr")]
            return 200, self._envelope(
                f"{SHELL_URI}/ReceiveResponse", message_id,
                "<rsp:ReceiveResponse>" + "".join(streams)
                + f'<rsp:CommandState CommandId="{command_id}" State="{STATE_DONE}">'
                f"<rsp:ExitCode>{cmd.record.exit_code}</rsp:ExitCode></rsp:CommandState>"
                "</rsp:ReceiveResponse>")
        if action == ACTION_SIGNAL:
            signal = request_body.find("rsp:Signal", NS)
            with self._lock:
                shell.commands.pop(signal.get("CommandId", ""), None)
            return 200, self._envelope(f"{SHELL_URI}/SignalResponse", message_id,
                                       "<rsp:SignalResponse/>")
        return 500, self._fault(message_id, "s:Sender", "a:ActionNotSupported", 2150858771,
                                f"The action {action} is not supported by the service.")

    # -- the emulated programs -------------------------------------------------------------
    def _start_command(self, user: str, command: str, arguments: str) -> _Command:
        record = CommandRecord(user=user, command=command, arguments=arguments)
        cmd = _Command(record=record)
        program = command.strip().strip('"').lower()
        program = re.sub(r"\.exe$", "", program.rsplit("\\", 1)[-1])
        if program == "whoami":
            self._finish(cmd, f"{self.hostname.lower()}\\{user.lower()}\r\n", "", 0)
        elif program == "powershell" or program == "pwsh":
            tokens = arguments.split()
            script = None
            for i, token in enumerate(tokens[:-1]):
                if token.lower() in ("-encodedcommand", "-enc", "-ec", "-e"):
                    try:
                        script = base64.b64decode(tokens[i + 1]).decode("utf-16-le")
                    except Exception:
                        script = None
            record.script = script
            if script is not None and ("ChangePassword(" in script or "SetPassword(" in script):
                cmd.needs_stdin = True  # runs when its stdin ends
            else:
                self._finish(cmd, "", "The emulated host only runs pamflow's password scripts.\r\n",
                             1)
        else:
            self._finish(cmd, "", f"'{command}' is not recognized as an internal or external "
                         "command,\r\noperable program or batch file.\r\n", 1)
        return cmd

    def _run_with_stdin(self, cmd: _Command) -> None:
        """Interpret pamflow's password scripts: base64 fields, one per line, on stdin."""
        try:
            fields = [base64.b64decode(line).decode("utf-8")
                      for line in bytes(cmd.stdin).decode("ascii").splitlines() if line.strip()]
        except Exception:
            self._finish(cmd, "", "Exception calling \"FromBase64String\": invalid input\r\n", 1)
            return
        change = "ChangePassword(" in (cmd.record.script or "")
        width = 3 if change else 2
        out = []
        with self._lock:
            caller = self.accounts.get(cmd.record.user.lower())
            for index in range(len(fields) // width):
                name, *secrets = fields[index * width:(index + 1) * width]
                account = self.account(name)
                if account is None:
                    error = E_NO_USER
                elif change and account.password != secrets[0]:
                    error = E_BAD_OLD
                elif not change and not (caller and caller.admin):
                    error = E_DENIED
                elif len(secrets[-1]) < self.min_password_length:
                    error = E_POLICY
                else:
                    self._set_password(account, secrets[-1])
                    error = None
                out.append(f"PAMFLOW-OK {index}" if error is None
                           else f"PAMFLOW-ERR {index} {error}")
        self._finish(cmd, "".join(line + "\r\n" for line in out), "", 0)

    def _finish(self, cmd: _Command, stdout: str, stderr: str, code: int) -> None:
        with self._changed:
            cmd.stdout, cmd.stderr = stdout.encode("utf-8"), stderr.encode("utf-8")
            cmd.record.exit_code = code
            cmd.done = True
            cmd.stdin.clear()
            self._changed.notify_all()

    # -- SOAP ----------------------------------------------------------------------------
    def _envelope(self, action: str, relates_to: str, body: str) -> bytes:
        return (
            '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
            'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
            'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
            'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
            'xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
            f"<s:Header><a:Action>{action}</a:Action>"
            f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
            "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
            f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
            f"<s:Body>{body}</s:Body></s:Envelope>"
        ).encode()

    def _fault(self, relates_to: str, code: str, subcode: str, wsman_code: int,
               reason: str) -> bytes:
        return self._envelope(
            "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to,
            f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}"
            f'</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{escape(reason)}'
            "</s:Text></s:Reason><s:Detail>"
            '<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
            f'Code="{wsman_code}" Machine="{escape(self.hostname)}">'
            f"<f:Message>{escape(reason)}</f:Message></f:WSManFault></s:Detail></s:Fault>")


def _duration(text: str) -> float:
    """An xs:duration like ``PT20S`` or ``PT1.5S`` in seconds."""
    match = re.fullmatch(r"PT(?:(\d+)M)?(?:([\d.]+)S)?", (text or "").strip())
    if not match:
        return 20.0
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)
