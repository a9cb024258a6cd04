"""A small threaded HTTP(S) server for the cloud peers: handlers are plain functions
``(method, path, query, headers, body) -> (status, headers, body)``, and every request is
recorded (method, path, headers) so tests can see what the real SDK sent."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[str, str, dict[str, list[str]], dict[str, str], bytes], Answer]


class Peer:
    """``Peer(handler).start()``; ``url`` is where it listens; ``stop()`` ends it."""

    def __init__(self, handler: Handler, cert: tuple[Path, Path] | None = None) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        peer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                peer.requests.append((self.command, self.path, headers))
                try:
                    status, extra, payload = peer.handler(self.command, parts.path,
                                                          parse_qs(parts.query), headers, body)
                except Exception as exc:  # noqa: BLE001 - a test peer answers 500, says why
                    status, extra, payload = 500, {}, repr(exc).encode()
                self.send_response(status)
                for k, v in {"Content-Length": str(len(payload)), **extra}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.server.daemon_threads = True
        scheme = "http"
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Peer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
