"""Outbox rows that cannot be forwarded die with their reason instead of being retried forever."""

from __future__ import annotations

import http.server
import threading
import uuid

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from pamflow.cli import app as cli_app
from pamflow.models import WebhookDelivery
from pamflow.platform import free_port
from pamflow.webhooks import outbox
from pamflow.webhooks.app import Gateway
from tests.test_webhooks import RunningGateway, _prefect_events, _wait

T = WebhookDelivery.__table__


def insert_row(engine, payload: dict, event_id: str | None = None) -> str:
    """An outbox row as the writer leaves it (accepted, not yet forwarded)."""
    event_id = event_id or str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(T.insert().values(event_id=event_id, source="import",
                                       delivery_id=f"d-{uuid.uuid4().hex[:8]}",
                                       event="pam.import.uploaded", payload=payload,
                                       received_at=outbox.utcnow(), attempts=0))
    return event_id


def row(engine, event_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(T).where(T.c.event_id == event_id)).one()._mapping)


def test_rows_prefect_refuses_or_that_cannot_be_encoded_die_and_the_rest_is_delivered(
        store, prefect_server):
    good = [insert_row(store, {"path": f"/ok/{i}.csv"}) for i in range(2)]
    refused = insert_row(store, {"path": "/x.csv"}, event_id="not-a-uuid")  # Prefect: 422
    # an older gateway let NaN through; the store keeps it, strict JSON cannot carry it
    unencodable = insert_row(store, {"path": "/y.csv", "n": float("nan")})
    good.append(insert_row(store, {"path": "/ok/2.csv"}))
    with RunningGateway(Gateway(store, api_url=prefect_server, sweep_seconds=0.2)) as gw:
        _wait(lambda: outbox.pending_count(store) == 0, what="every row settled")
        health = gw.client.get("/health").json()
    assert (health["outbox_pending"], health["outbox_dead"]) == (0, 2)

    for event_id in good:
        assert row(store, event_id)["delivered_at"] is not None
    arrived = _wait(lambda: (found := {e["id"] for e in _prefect_events(prefect_server, "pam.import.")}
                             ) >= set(good) and found, what="the good events in Prefect")
    assert refused not in arrived
    dead = row(store, refused)
    assert dead["dead_at"] is not None and dead["delivered_at"] is None
    assert dead["last_error"].startswith(f"{prefect_server}/events answered 422: body.0.id")
    dead = row(store, unencodable)
    assert dead["dead_at"] is not None and dead["last_error"] == "cannot be encoded as JSON"
    # dead rows are never claimed again: no forwarder posts them any more
    assert outbox.claim(store) == []

    runner = CliRunner()
    shown = runner.invoke(cli_app, ["webhooks", "outbox"])
    assert shown.exit_code == 0, shown.output
    assert "0 waiting for Prefect, 2 dead" in shown.output
    assert refused in shown.output and "answered 422" in shown.output
    assert unencodable in shown.output and "cannot be encoded as JSON" in shown.output
    again = runner.invoke(cli_app, ["webhooks", "outbox", "--requeue", refused])
    assert again.exit_code == 0 and "1 dead row(s) re-queued" in again.output
    assert [r["event_id"] for r in outbox.claim(store)] == [refused]
    assert runner.invoke(cli_app, ["webhooks", "outbox", "--requeue", good[0]]).exit_code == 1


class BrokenPrefect:
    """An HTTP server on loopback that answers every ``POST /api/events`` with ``status``
    (Prefect's own server never answers 500 on demand)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posts = 0
        self.answered: dict[int, int] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = owner.status
                owner.posts += 1
                owner.answered[status] = owner.answered.get(status, 0) + 1
                body = b'{"exception_message": "Internal Server Error"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broken_prefect():
    server = BrokenPrefect(503)
    yield server
    server.close()


def test_a_row_that_keeps_failing_dies_after_max_failures_but_unavailability_never_kills(
        store, broken_prefect):
    event_id = insert_row(store, {"path": "/x.csv"})
    with RunningGateway(Gateway(store, api_url=broken_prefect.url, sweep_seconds=0.05,
                                max_failures=3)) as gw:
        gw.gateway.forwarder.max_backoff = 0.1
        # 503: Prefect is overloaded, not the row's fault; it waits, uncounted, however often
        _wait(lambda: broken_prefect.posts >= 5, what="five posts answered 503")
        waiting = row(store, event_id)
        assert waiting["failures"] == 0 and waiting["dead_at"] is None
        assert waiting["last_error"] == f"{broken_prefect.url}/events answered 503"
        # 500 may be the row's fault: counted, and dead at the third
        broken_prefect.status = 500
        _wait(lambda: row(store, event_id)["dead_at"] is not None, what="the row marked dead")
        dead = row(store, event_id)
        assert dead["failures"] == 3 and dead["delivered_at"] is None
        assert dead["last_error"] == f"{broken_prefect.url}/events answered 500"
        assert gw.client.get("/health").json()["outbox_dead"] == 1
    assert broken_prefect.answered[500] == 3  # and never posted again
    assert outbox.claim(store) == []
