"""Hostile input against the real gateway over HTTP: every call gets a 4xx and a reason.

Each case is sent on a raw socket (so headers and bodies go out byte for byte, as an
attacker would send them) to a real uvicorn serving the gateway on a real store. The
answer must be the listed status with ``{"error": reason}``, nothing may be written to the
outbox, the server must log no traceback, and a correct call must still be accepted after.
"""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
import sqlalchemy as sa

from pamflow.models import WebhookDelivery
from pamflow.webhooks.app import Gateway
from pamflow.webhooks.signing import sign
from pamflow.webhooks.sources import add_source
from tests.test_webhooks import DEAD_PREFECT, IMPORT_BODY, RunningGateway

T = WebhookDelivery.__table__
MAX_BODY = 4096


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, CRLF-separated, no final blank line) and
    ``body`` as they are; return (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                headers = data[:head_end].lower()
                if b"content-length:" in headers:
                    length = int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    if len(data) >= head_end + 4 + length:
                        break
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), data[:200]
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def signed(secret: str, body: bytes, *, timestamp: bytes | None = None, delivery: bytes = b"d-1",
           event: bytes = b"uploaded", content_type: bytes = b"application/json",
           length: bytes | None = None, extra: list[bytes] = (),
           path: bytes = b"/hooks/import") -> bytes:
    """A request head signing ``body``; header values given as bytes go out unchanged."""
    ts = timestamp if timestamp is not None else str(int(time.time())).encode()
    sig = sign(secret, ts.decode("latin-1"), delivery.decode("latin-1"),
               event.decode("latin-1"), body).encode()
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1",
             b"Content-Type: " + content_type,
             b"Content-Length: " + (length if length is not None else str(len(body)).encode()),
             b"X-Pamflow-Timestamp: " + ts, b"X-Pamflow-Delivery: " + delivery,
             b"X-Pamflow-Event: " + event, b"X-Pamflow-Signature: " + sig, *extra,
             b"Connection: close"]
    return b"\r\n".join(lines)


def nested(depth: int) -> bytes:
    return b'{"path": "/x.csv", "deep": ' + b"[" * depth + b"]" * depth + b"}"


# case -> (body, head keyword arguments, status, reason); a reason of None accepts any
# answer from the HTTP server itself (it refuses before the gateway is called)
CASES = {
    "unicode superscript digit in timestamp": (
        IMPORT_BODY, {"timestamp": "²".encode()}, 400, "malformed X-Pamflow-Timestamp"),
    "arabic-indic digits in timestamp": (
        IMPORT_BODY, {"timestamp": "١٧٠٠٠٠٠٠٠٠".encode()}, 400, "malformed X-Pamflow-Timestamp"),
    "fullwidth digits in timestamp": (
        IMPORT_BODY, {"timestamp": "１７００".encode()}, 400, "malformed X-Pamflow-Timestamp"),
    "non-UTF-8 byte in timestamp": (
        IMPORT_BODY, {"timestamp": b"17\xb2"}, 400, "malformed X-Pamflow-Timestamp"),
    "signed timestamp": (IMPORT_BODY, {"timestamp": b"+1700000000"}, 400,
                         "malformed X-Pamflow-Timestamp"),
    "timestamp of 13 digits": (IMPORT_BODY, {"timestamp": b"1" * 13}, 400,
                               "malformed X-Pamflow-Timestamp"),
    "non-ASCII delivery id": (IMPORT_BODY, {"delivery": "dé".encode()}, 400,
                              "malformed X-Pamflow-Delivery"),
    "delivery id of 129 characters": (IMPORT_BODY, {"delivery": b"d" * 129}, 400,
                                      "malformed X-Pamflow-Delivery"),
    "upper-case event": (IMPORT_BODY, {"event": b"UPLOADED"}, 400, "malformed X-Pamflow-Event"),
    "non-UTF-8 event": (IMPORT_BODY, {"event": b"up\xffloaded"}, 400, "malformed X-Pamflow-Event"),
    "negative content-length": (IMPORT_BODY, {"length": b"-1"}, 400, None),
    "non-ASCII content-length": (IMPORT_BODY, {"length": "３６".encode()}, 400, None),
    "huge header value": (IMPORT_BODY, {"extra": [b"X-Junk: " + b"a" * 200_000]}, None, None),
    "body not UTF-8": (b'{"path": "/x\xff.csv"}', {}, 400, "body is not UTF-8"),
    "body in UTF-16": ('{"path": "/x.csv"}'.encode("utf-16"), {}, 400, "body is not UTF-8"),
    "body with a UTF-8 byte order mark": (b"\xef\xbb\xbf" + IMPORT_BODY, {}, 400,
                                          "malformed JSON"),
    "empty body": (b"", {}, 400, "malformed JSON"),
    "truncated JSON": (b'{"path": "/x.csv"', {}, 400, "malformed JSON"),
    "trailing garbage": (IMPORT_BODY + b"x", {}, 400, "malformed JSON"),
    "JSON nested 2000 deep": (nested(2000), {}, 400, "JSON nested deeper than 32 levels"),
    "JSON nested 100000 deep (streamed past the limit)": (
        nested(100_000), {}, 413, f"body larger than {MAX_BODY} bytes"),
    "JSON nested 40 deep": (nested(40), {}, 400, "JSON nested deeper than 32 levels"),
    "NaN": (b'{"path": "/x.csv", "n": NaN}', {}, 400, "JSON must not contain NaN or Infinity"),
    "Infinity": (b'{"path": "/x.csv", "n": -Infinity}', {}, 400,
                 "JSON must not contain NaN or Infinity"),
    "number overflowing to infinity": (b'{"path": "/x.csv", "n": 1e400}', {}, 400,
                                       "JSON number out of range"),
    "integer of 5000 digits": (b'{"path": "/x.csv", "n": ' + b"9" * 5000 + b"}", {}, 413,
                               f"body larger than {MAX_BODY} bytes"),
    "integer of 4000 digits": (b'{"path": "/x.csv", "n": ' + b"9" * 4000 + b"}", {}, 400,
                               "JSON number out of range"),
    "integer beyond 64 bits": (b'{"path": "/x.csv", "n": 18446744073709551616}', {}, 400,
                               "JSON number out of range"),
    "duplicate keys": (b'{"path": "/x.csv", "path": "/etc/shadow"}', {}, 400,
                       "duplicate key in JSON object: path"),
    "lone surrogate": (b'{"path": "/x\\ud800.csv"}', {}, 400,
                       "JSON string with an unpaired surrogate"),
    "lone surrogate in a key": (b'{"path": "/x.csv", "\\udfff": 1}', {}, 400,
                                "JSON string with an unpaired surrogate"),
    "JSON scalar": (b"1", {}, 422, "payload must be a JSON object"),
    "content type with another charset": (
        '{"path": "/x.csv"}'.encode("utf-16"), {"content_type": b"application/json; charset=utf-16"},
        400, "body is not UTF-8"),
    "source with percent-encoded control and invalid UTF-8 bytes": (
        IMPORT_BODY, {"path": b"/hooks/%ff%00%0a"}, 401, "invalid signature"),
    "source name of 5000 characters": (IMPORT_BODY, {"path": b"/hooks/" + b"a" * 5000}, 401,
                                       "invalid signature"),
    "content type not ASCII": (IMPORT_BODY, {"content_type": "application/jsoné".encode()}, 415,
                               "content type must be application/json"),
}


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory):
    """One gateway for the whole table (its store is checked to stay empty after each case)."""
    from pamflow import db

    path = tmp_path_factory.mktemp("hostile") / "pamflow.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.migrate(engine)
    secret = add_source(engine, "import")
    with RunningGateway(Gateway(engine, api_url=DEAD_PREFECT, max_body=MAX_BODY)) as gw:
        yield gw, engine, secret
    engine.dispose()


@pytest.fixture(autouse=True)
def _empty_outbox(hostile_gateway):
    yield
    with hostile_gateway[1].begin() as conn:
        conn.execute(T.delete())


def outbox_rows(engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(T.c.delivery_id)))


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_refused_with_a_4xx_and_a_reason(hostile_gateway, caplog, case):
    gw, engine, secret = hostile_gateway
    body, head_kw, status, reason = CASES[case]
    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn.error").addHandler(caplog.handler)  # uvicorn does not propagate
    got, answer = raw_request(gw.port, signed(secret, body, **head_kw), body)
    if status is None:
        assert 400 <= got < 500, (got, answer)
    else:
        assert got == status, (got, answer)
    if reason is not None:
        assert json.loads(answer) == {"error": reason}
    logging.getLogger("uvicorn.error").removeHandler(caplog.handler)
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text
    assert outbox_rows(engine) == []
    # the gateway still takes a correct call afterwards
    ok = raw_request(gw.port, signed(secret, IMPORT_BODY, delivery=f"ok-{abs(hash(case))}".encode()),
                     IMPORT_BODY)
    assert ok[0] == 202, ok
