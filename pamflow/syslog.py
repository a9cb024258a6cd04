"""Syslog lines in RFC 5424 format, sent over UDP (RFC 5426), TCP (RFC 6587, octet
counting) or TLS (RFC 5425).

TLS, with the server's certificate verified, is the default; UDP and TCP are cleartext and
used only when the target says so (``allow_cleartext``), with a warning on each use.
Every value put in a line is made safe: header fields are printable ASCII without spaces,
structured-data values escape ``"``, ``\\`` and ``]``, and control characters (a newline
in a deployment name, say) never reach the receiver as such.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .errors import PamflowError

log = logging.getLogger(__name__)

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5,
              "info": 6, "debug": 7}
PROTOCOLS = ("tls", "tcp", "udp")
# an enterprise number for the structured data id (the "example" number of RFC 5612 is
# 32473; pamflow has none of its own)
SD_ENTERPRISE = 32473
UDP_MAX = 2048  # RFC 5426: every receiver must take 480 octets, should take 2048
LINE_MAX = 8192  # over TCP/TLS


class SyslogError(PamflowError):
    """A syslog target that is misconfigured or cannot be reached (host and port named)."""


@dataclass(frozen=True)
class SyslogTarget:
    """Where syslog lines go; built from the ``Syslog target`` block."""

    host: str
    port: int = 6514
    protocol: str = "tls"
    facility: str = "local0"
    app_name: str = "pamflow"
    hostname: str | None = None  # HOSTNAME field; the machine's name when None
    allow_cleartext: bool = False
    ca_file: str | None = None  # TLS: CA bundle to verify the receiver (system CAs if None)
    verify: bool = True  # TLS: verify the receiver's certificate and name
    timeout: float = 5.0

    def check(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise SyslogError(f"syslog target {self.host}:{self.port}: protocol "
                              f"{self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.facility not in FACILITIES:
            raise SyslogError(f"syslog target {self.host}:{self.port}: unknown facility "
                              f"{self.facility!r}")
        if not 0 < self.port < 65536:
            raise SyslogError(f"syslog target {self.host}: port {self.port} is out of range")
        if self.protocol != "tls" and not self.allow_cleartext:
            raise SyslogError(f"syslog target {self.host}:{self.port} uses {self.protocol} "
                              "(cleartext): set allow_cleartext on the target to permit it, or "
                              "use tls")


@dataclass(frozen=True)
class SyslogMessage:
    """One line: its severity, message id, structured data (``{name: value}`` under one SD
    id) and free text."""

    text: str
    msgid: str = "-"
    severity: str = "notice"
    data: dict[str, str] = field(default_factory=dict)
    sd_id: str = f"pamflow@{SD_ENTERPRISE}"
    timestamp: datetime | None = None


def _header_token(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (RFC 5424 PRINTUSASCII), or "-"."""
    if not value:
        return "-"
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


def _sd_name(value: str) -> str:
    """An SD-NAME: printable ASCII except ``= ] " space``, at most 32 characters."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126 and c not in '=]"')[:32]
    return cleaned or "x"


def _safe_text(value: str) -> str:
    """Control characters (CR, LF, NUL, ...) shown as ``\\xNN``: one event, one line."""
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in value)


def _sd_value(value: str) -> str:
    return _safe_text(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _truncate_utf8(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode()


def format_line(target: SyslogTarget, msg: SyslogMessage, procid: int | None = None,
                limit: int = LINE_MAX) -> bytes:
    """The RFC 5424 line for ``msg``: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] BOM MSG``."""
    pri = FACILITIES[target.facility] * 8 + SEVERITIES.get(msg.severity, 5)
    stamp = (msg.timestamp.isoformat(timespec="microseconds").replace("+00:00", "Z")
             if msg.timestamp else "-")
    host = _header_token(target.hostname or socket.gethostname(), 255)
    header = (f"<{pri}>1 {stamp} {host} {_header_token(target.app_name, 48)} "
              f"{_header_token(str(procid) if procid else None, 128)} "
              f"{_header_token(msg.msgid, 32)} ")
    if msg.data:
        params = " ".join(f'{_sd_name(k)}="{_sd_value(str(v))}"' for k, v in msg.data.items())
        sd = f"[{_sd_name(msg.sd_id)} {params}]"
    else:
        sd = "-"
    head = (header + sd).encode("utf-8")
    body = b" \xef\xbb\xbf" + _safe_text(msg.text).encode("utf-8")
    if len(head) + len(body) > limit:  # cut the free text first, then the structured data
        room = limit - len(head)
        if room >= 4:
            return head + _truncate_utf8(body, room)
        return _truncate_utf8((header + "-").encode() + body, limit)
    return head + body


class SyslogSender:
    """A connection to one target, reused for a batch of lines (``with SyslogSender(t) as s``)."""

    def __init__(self, target: SyslogTarget, procid: int | None = None) -> None:
        target.check()
        self.target = target
        self.procid = procid
        self._sock: socket.socket | None = None

    def __enter__(self) -> SyslogSender:
        if self.target.protocol != "tls":
            log.warning("syslog to %s:%d over %s: cleartext, allowed by the target's "
                        "allow_cleartext", self.target.host, self.target.port,
                        self.target.protocol)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close gracefully: a stream connection is half-closed and drained first, since a
        socket closed with unread data (a TLS 1.3 session ticket) is reset by the kernel,
        and a reset makes the receiver drop the last lines it had not read yet."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if self.target.protocol != "udp":
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(min(self.target.timeout, 2.0))
                for _ in range(64):
                    if not sock.recv(4096):
                        break
        except OSError:
            pass
        finally:
            sock.close()

    def _where(self) -> str:
        return f"syslog {self.target.protocol}://{self.target.host}:{self.target.port}"

    def _connect(self) -> socket.socket:
        t = self.target
        try:
            if t.protocol == "udp":
                info = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                sock.connect(info[4])
                return sock
            raw = socket.create_connection((t.host, t.port), timeout=t.timeout)
            if t.protocol == "tcp":
                return raw
            ctx = ssl.create_default_context(cafile=t.ca_file)
            if not t.verify:
                log.warning("%s: the receiver's certificate is NOT verified (verify=false)",
                            self._where())
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return ctx.wrap_socket(raw, server_hostname=t.host)
        except ssl.SSLError as exc:
            raise SyslogError(f"{self._where()}: TLS failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise SyslogError(f"{self._where()}: cannot connect: "
                              f"{exc.strerror or exc}") from None

    def send(self, msg: SyslogMessage) -> None:
        """Send one line; a broken stream connection is re-opened once."""
        udp = self.target.protocol == "udp"
        line = format_line(self.target, msg, self.procid, UDP_MAX if udp else LINE_MAX)
        frame = line if udp else f"{len(line)} ".encode() + line
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(frame)
                return
            except OSError as exc:
                self.close()
                if attempt == 2 or udp:
                    raise SyslogError(f"{self._where()}: send failed: "
                                      f"{exc.strerror or exc}") from None

    def send_all(self, messages: Iterable[SyslogMessage]) -> int:
        count = 0
        for msg in messages:
            self.send(msg)
            count += 1
        return count


def send(target: SyslogTarget, messages: Sequence[SyslogMessage]) -> int:
    """Send ``messages`` over one connection; the number sent."""
    with SyslogSender(target) as sender:
        return sender.send_all(messages)
