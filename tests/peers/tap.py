"""A TCP relay that records every byte a client sends on the way to a real server.

Tests put it between a target and a real peer (slapd, the WS-Management endpoint) to see
what actually travelled: that a client refusing cleartext sent only a TLS ClientHello, that
no password crossed the wire. It listens on any loopback address (``127.0.0.2`` reaches the
same host under a name the peer's certificate does not carry).

Usage::

    with Tap("127.0.0.1", slapd.port) as tap:
        ...  # connect to tap.host:tap.port
        assert b"secret" not in tap.sent
"""

from __future__ import annotations

import socket
import threading


class Tap:
    """Relay ``listen_host:<free port>`` -> ``host:port``; ``sent`` is what clients sent."""

    def __init__(self, host: str, port: int, listen_host: str = "127.0.0.1") -> None:
        self._upstream = (host, port)
        self._listener = socket.create_server((listen_host, 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._sent = bytearray()
        self._lock = threading.Lock()
        self.connections = 0
        self._closing = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tap-accept")
        self._thread.start()

    @property
    def sent(self) -> bytes:
        """Everything every client has sent so far (client -> server direction)."""
        with self._lock:
            return bytes(self._sent)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self._lock:
                        self._sent.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_tls_client_hello(data: bytes) -> bool:
    """True when ``data`` starts with a TLS handshake record holding a ClientHello."""
    return len(data) >= 6 and data[0] == 0x16 and data[1] == 0x03 and data[5] == 0x01
