"""Delivery channels: SMTP (STARTTLS or implicit TLS, verification on), RFC 5424 syslog over
UDP or TCP, and HMAC-signed outgoing webhooks (signed like pamflow's own gateway).

A channel is opened once per batch and reused for every message of the batch (one SMTP
connection, one TCP connection per syslog target, one HTTP client). ``send`` raises
:class:`DeliveryError`: ``permanent`` when retrying cannot help (an SMTP 5xx, a webhook 4xx),
``connection`` when the channel itself is down (the rest of the batch is not tried).
"""

from __future__ import annotations

import json
import logging
import quopri
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from email.utils import format_datetime
from typing import Protocol
from urllib.parse import urlsplit

from ..errors import PamflowError

log = logging.getLogger(__name__)

SECURITY_MODES = ("starttls", "tls", "plain")


class DeliveryError(PamflowError):
    def __init__(self, message: str, *, permanent: bool = False, connection: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.connection = connection


@dataclass(frozen=True)
class OutMessage:
    id: int
    message_id: str
    tenant: str
    channel: str
    recipient: str
    type: str
    severity: str
    subject: str
    text: str
    html: str | None
    created_at: datetime
    notification_ids: list[int] = field(default_factory=list)
    secret_ref: str | None = None
    attempts: int = 0


class Channel(Protocol):
    name: str

    def send(self, msg: OutMessage, before_data: Callable[[], None] | None = None) -> None: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- SMTP
@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    security: str = "starttls"  # starttls | tls | plain (plain: allow_cleartext must be set)
    from_address: str = "pamflow@localhost"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # a private CA; the system's trust store otherwise
    allow_cleartext: bool = False
    timeout: float = 30.0
    helo: str | None = None

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValueError(f"SMTP security must be one of {', '.join(SECURITY_MODES)}")
        if self.security == "plain" and not self.allow_cleartext:
            raise ValueError("SMTP without TLS needs allow_cleartext=True (mail and password "
                             "would cross the network readable)")

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2] or "localhost"


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification on, hostname checked; a private CA when given."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _header(value: str) -> str:
    """A header value on one line; RFC 2047 encoded when it is not plain ASCII."""
    value = " ".join(str(value).encode("utf-8", "replace").decode("utf-8").split())
    if value.isascii() and len(value) < 900:
        return value
    return Header(value[:900], "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _qp(text: str) -> bytes:
    body = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8", "replace"))
    return body.replace(b"\n", b"\r\n")


def build_email(msg: OutMessage, from_address: str) -> bytes:
    """The MIME message: text and HTML alternatives (quoted-printable, CRLF line ends, as
    smtplib sends bytes as they are), the stable Message-ID. Built by hand: the email
    package's generator is slow on large bodies and this shape never varies."""
    headers = [
        ("From", from_address), ("To", msg.recipient), ("Subject", msg.subject),
        ("Date", format_datetime(msg.created_at)), ("Message-ID", msg.message_id),
        ("Auto-Submitted", "auto-generated"), ("X-Pamflow-Type", msg.type),
        ("X-Pamflow-Tenant", msg.tenant), ("MIME-Version", "1.0"),
    ]
    head = "".join(f"{k}: {_header(v)}\r\n" for k, v in headers)
    text_part = (b'Content-Type: text/plain; charset="utf-8"\r\n'
                 b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _qp(msg.text))
    if not msg.html:
        return head.encode() + text_part
    boundary = f"=_pamflow_{msg.id}"  # "=_" never occurs in quoted-printable parts
    html_part = (b'Content-Type: text/html; charset="utf-8"\r\n'
                 b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _qp(msg.html))
    sep = f"\r\n--{boundary}\r\n".encode()
    return (head.encode() + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode()
            + sep[2:] + text_part + sep + html_part + f"\r\n--{boundary}--\r\n".encode())


def _smtp_error(exc: Exception, what: str) -> DeliveryError:
    code = getattr(exc, "smtp_code", None)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [c for c, _ in exc.recipients.values()]
        code = codes[0] if codes else None
    if code is None and isinstance(exc, smtplib.SMTPServerDisconnected | OSError):
        return DeliveryError(f"{what}: connection lost: {type(exc).__name__}: {exc}"[:500],
                             connection=True)
    text = f"{what}: SMTP {code or '?'}: {exc}"[:500]
    return DeliveryError(text, permanent=isinstance(code, int) and 500 <= code < 600)


class SmtpChannel:
    """One SMTP connection per batch, reconnected once if the server drops it."""

    name = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self.connections = 0

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, local_hostname=s.helo,
                                                      timeout=s.timeout, context=tls_context(s.ca_file))
            else:
                smtp = smtplib.SMTP(s.host, s.port, local_hostname=s.helo, timeout=s.timeout)
            smtp.ehlo()
            if s.security == "starttls":
                if not smtp.has_extn("starttls"):
                    smtp.close()
                    raise DeliveryError(f"SMTP server {s.host}:{s.port} does not offer STARTTLS; "
                                        "refusing to send in cleartext", connection=True)
                smtp.starttls(context=tls_context(s.ca_file))
                smtp.ehlo()
            else:
                if s.security == "plain":
                    log.warning("SMTP to %s:%s WITHOUT TLS (allow_cleartext is set): mail "
                                "crosses the network readable", s.host, s.port)
            if s.username:
                smtp.login(s.username, s.password or "")
        except DeliveryError:
            raise
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS with {s.host}:{s.port} failed: {exc.reason or exc}"[:500],
                                connection=True) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP login as {s.username} refused: {exc.smtp_code}",
                                connection=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"cannot reach SMTP server {s.host}:{s.port}: "
                                f"{type(exc).__name__}: {exc}"[:500], connection=True) from None
        self.connections += 1
        return smtp

    def _transaction(self, smtp: smtplib.SMTP, rcpt: str, data: bytes,
                     before_data: Callable[[], None] | None) -> None:
        """smtplib's ``sendmail`` for one recipient. ``before_data`` (the caller's work for the
        previous message: recording it as sent) runs while the server answers MAIL FROM, so
        it overlaps a network round trip instead of adding to it; it always runs before this
        message's DATA."""
        sender = self.settings.from_address
        smtp.putcmd("mail", f"FROM:{smtplib.quoteaddr(sender)}")
        if before_data is not None:
            try:
                before_data()
            except BaseException:
                try:
                    smtp.getreply()
                    smtp.rset()
                except (smtplib.SMTPException, OSError):
                    pass
                raise
        code, resp = smtp.getreply()
        if code != 250:
            smtp.rset()
            raise smtplib.SMTPSenderRefused(code, resp, sender)
        code, resp = smtp.rcpt(rcpt)
        if code not in (250, 251):
            smtp.rset()
            raise smtplib.SMTPRecipientsRefused({rcpt: (code, resp)})
        code, resp = smtp.data(data)
        if code != 250:
            smtp.rset()
            raise smtplib.SMTPDataError(code, resp)

    def send(self, msg: OutMessage, before_data: Callable[[], None] | None = None) -> None:
        data = build_email(msg, self.settings.from_address)
        for attempt in (1, 2):
            if self._smtp is None:
                self._smtp = self._connect()
            try:
                self._transaction(self._smtp, msg.recipient, data, before_data)
                return
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                self._drop()
                if attempt == 2:
                    raise _smtp_error(exc, "send") from None
                # the server dropped an idle connection: reconnect once. A drop during DATA
                # means it did not answer 250, so it did not take the message.
            except (smtplib.SMTPException, OSError) as exc:
                err = _smtp_error(exc, "send")
                if err.connection:
                    self._drop()
                else:
                    self._reset()
                raise err from None

    def _reset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
        self._smtp = None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
        self._drop()


# ----------------------------------------------------------------------------- syslog
_SYSLOG_SEVERITY = {"critical": 2, "warning": 4, "notice": 5, "info": 6}
FACILITY_LOCAL0 = 16


def syslog_line(msg: OutMessage, hostname: str | None = None, app: str = "pamflow") -> bytes:
    """One RFC 5424 message (no structured data; the subject, then the text on one line)."""
    pri = FACILITY_LOCAL0 * 8 + _SYSLOG_SEVERITY.get(msg.severity, 6)
    host = (hostname or socket.gethostname() or "-")[:255]
    msgid = "".join(c for c in msg.type if c.isalnum())[:32] or "-"
    text = " ".join(f"{msg.subject} | {msg.text}".split())
    ts = msg.created_at.isoformat().replace("+00:00", "Z")
    return f"<{pri}>1 {ts} {host} {app} - {msgid} - ".encode() + text.encode("utf-8")[:8000]


class SyslogChannel:
    """RFC 5424 to ``udp://host:port`` or ``tcp://host:port`` (octet-counted framing)."""

    name = "syslog"

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._socks: dict[str, socket.socket] = {}

    def send(self, msg: OutMessage, before_data: Callable[[], None] | None = None) -> None:
        if before_data is not None:
            before_data()
        parts = urlsplit(msg.recipient)
        host, port = parts.hostname or "", parts.port or 514
        line = syslog_line(msg)
        try:
            if parts.scheme == "udp":
                with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                   socket.SOCK_DGRAM) as s:
                    s.sendto(line, (host, port))
                return
            sock = self._socks.get(msg.recipient)
            if sock is None:
                sock = socket.create_connection((host, port), timeout=self.timeout)
                self._socks[msg.recipient] = sock
            sock.sendall(str(len(line)).encode() + b" " + line)
        except OSError as exc:
            old = self._socks.pop(msg.recipient, None)
            if old is not None:
                old.close()
            raise DeliveryError(f"syslog {msg.recipient}: {type(exc).__name__}: {exc}"[:500]) from None

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


# ----------------------------------------------------------------------------- webhook
WEBHOOK_EVENT = "notification"


def webhook_body(msg: OutMessage) -> bytes:
    return json.dumps({"message_id": msg.message_id, "type": msg.type, "severity": msg.severity,
                       "tenant": msg.tenant, "subject": msg.subject, "text": msg.text,
                       "notification_ids": msg.notification_ids,
                       "created_at": msg.created_at.isoformat()},
                      separators=(",", ":"), sort_keys=True).encode()


class WebhookChannel:
    """POST the message as JSON, signed with the route's secret exactly like the gateway
    checks incoming calls (``pamflow.webhooks.signing``): the receiver can verify it with
    the same code. The delivery id is the message's id, so a re-sent message is recognisable."""

    name = "webhook"

    def __init__(self, secret_of, timeout: float = 10.0, ca_file: str | None = None) -> None:
        import httpx

        self._secret_of = secret_of
        self._client = httpx.Client(timeout=timeout, verify=tls_context(ca_file),
                                    follow_redirects=False)

    def send(self, msg: OutMessage, before_data: Callable[[], None] | None = None) -> None:
        import httpx

        from ..webhooks.signing import signed_headers

        if before_data is not None:
            before_data()
        if not msg.secret_ref:
            raise DeliveryError("webhook message without a signing secret", permanent=True)
        body = webhook_body(msg)
        delivery = "".join(c for c in msg.message_id if c.isalnum() or c in "_-:")[:128]
        headers = signed_headers(self._secret_of(msg.secret_ref), WEBHOOK_EVENT, body, delivery)
        try:
            resp = self._client.post(msg.recipient, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {urlsplit(msg.recipient).hostname}: "
                                f"{type(exc).__name__}"[:500]) from None
        if resp.status_code < 300:
            return
        permanent = 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 425, 429)
        if resp.status_code == 409:  # the receiver already has this delivery id: it was delivered
            return
        raise DeliveryError(f"webhook answered HTTP {resp.status_code}", permanent=permanent)

    def close(self) -> None:
        self._client.close()
