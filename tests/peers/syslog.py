"""Syslog receivers on 127.0.0.1 for tests: UDP (one datagram a line), TCP and TLS (RFC 6587
octet counting, ``LEN SP LINE``)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path


class SyslogReceiver:
    """Collects the lines a syslog sender delivers; ``wait_for(text)`` blocks until one
    containing ``text`` arrived."""

    def __init__(self, protocol: str, cert: Path | None = None, key: Path | None = None) -> None:
        self.protocol = protocol
        self.ca_file = str(cert) if cert else None  # the CA a sender trusts (self-signed)
        self.lines: list[bytes] = []
        self._cond = threading.Condition()
        self._closing = False
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._ctx: ssl.SSLContext | None = None
        if protocol == "tls":
            self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ctx.load_cert_chain(str(cert), str(key))
        if protocol != "udp":
            self.sock.listen(8)
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _add(self, line: bytes) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def _serve(self) -> None:
        while not self._closing:
            try:
                if self.protocol == "udp":
                    data, _ = self.sock.recvfrom(65535)
                    self._add(data)
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._stream, args=(conn,), daemon=True).start()

    def _stream(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            if self._ctx is not None:
                conn = self._ctx.wrap_socket(conn, server_side=True)
            buf = b""
            while not self._closing:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:
                    size, rest = buf.split(b" ", 1)
                    if len(rest) < int(size):
                        break
                    self._add(rest[:int(size)])
                    buf = rest[int(size):]
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def text(self) -> list[str]:
        with self._cond:
            return [line.decode("utf-8", "replace") for line in self.lines]

    def wait_for(self, *needles: str, timeout: float = 20) -> list[str]:
        """The lines containing every needle, once at least one arrived (or [] at timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [t for t in (ln.decode("utf-8", "replace") for ln in self.lines)
                         if all(n in t for n in needles)]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._cond.wait(left)

    def close(self) -> None:
        self._closing = True
        self.sock.close()
        self._thread.join(timeout=2)
