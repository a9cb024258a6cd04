"""The webhook gateway: every refusal path, the outbox, secrets, forwarding to a real Prefect."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from typer.testing import CliRunner

from pamflow.cli import app as cli_app
from pamflow.models import WebhookDelivery, WebhookSource
from pamflow.platform import free_port
from pamflow.webhooks import outbox, signing
from pamflow.webhooks.app import Gateway
from pamflow.webhooks.signing import signed_headers
from pamflow.webhooks.sources import add_source, rotate_secret

T = WebhookDelivery.__table__
IMPORT_BODY = json.dumps({"path": "/data/uploads/devices.csv"}).encode()


class RunningGateway:
    """A real uvicorn serving a Gateway on a free loopback port, in a thread."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(gateway, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningGateway:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(20)

    def post(self, source: str, body: bytes, headers: dict) -> httpx.Response:
        return self.client.post(f"/hooks/{source}", content=body, headers=headers)


DEAD_PREFECT = "http://127.0.0.1:9/api"  # nothing listens: the forwarder keeps rows pending


@pytest.fixture
def secret(store):
    return add_source(store, "import")


@pytest.fixture
def gateway(store, secret):
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT, max_body=4096, sweep_seconds=0.2)) as gw:
        yield gw


def rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(T).order_by(T.c.id))]


def test_signed_call_is_written_to_the_outbox_and_answered_202(gateway, store, secret):
    headers = signed_headers(secret, "uploaded", IMPORT_BODY, delivery="d-1")
    resp = gateway.post("import", IMPORT_BODY, headers)
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["event"] == "pam.import.uploaded"
    [row] = rows(store)
    assert row["event_id"] == answer["event_id"]
    assert (row["source"], row["delivery_id"], row["event"]) == ("import", "d-1", "pam.import.uploaded")
    assert row["payload"] == {"path": "/data/uploads/devices.csv", "tenant": "default"}
    assert row["delivered_at"] is None  # Prefect is unreachable: it waits in the outbox
    health = gateway.client.get("/health").json()
    assert health["status"] == "ok" and health["accepted"] == 1


@pytest.mark.parametrize(
    "case, status, reason",
    [
        ("wrong secret", 401, "invalid signature"),
        ("tampered body", 401, "invalid signature"),
        ("tampered delivery id", 401, "invalid signature"),
        ("tampered event", 401, "invalid signature"),
        ("no signature", 401, "missing signature headers"),
        ("signature without prefix", 401, "malformed signature headers"),
        ("stale timestamp", 401, "stale timestamp"),
        ("future timestamp", 401, "stale timestamp"),
        ("text/plain", 415, "content type must be application/json"),
        ("no content type", 415, "content type must be application/json"),
        ("malformed JSON", 400, "malformed JSON"),
        ("JSON array", 422, "payload must be a JSON object"),
        ("path missing", 422, "path is required"),
        ("path not a string", 422, "path must be a string"),
        ("path empty", 422, "path must not be empty"),
        ("unknown event", 422, "unknown event pam.import.deleted"),
    ],
)
def test_refusals_answer_their_status_and_write_nothing(gateway, store, secret, case, status, reason):
    body = IMPORT_BODY
    event = "uploaded"
    headers = signed_headers(secret, event, body)
    if case == "wrong secret":
        headers = signed_headers(signing.generate_secret(), event, body)
    elif case == "tampered body":
        body = json.dumps({"path": "/etc/shadow"}).encode()
    elif case == "tampered delivery id":
        headers[signing.DELIVERY_HEADER] = "another-id"
    elif case == "tampered event":
        headers[signing.EVENT_HEADER] = "deleted"
    elif case == "no signature":
        del headers[signing.SIGNATURE_HEADER]
    elif case == "signature without prefix":
        headers[signing.SIGNATURE_HEADER] = headers[signing.SIGNATURE_HEADER][len("sha256="):]
    elif case == "stale timestamp":
        headers = signed_headers(secret, event, body, timestamp=int(time.time()) - 301)
    elif case == "future timestamp":
        headers = signed_headers(secret, event, body, timestamp=int(time.time()) + 301)
    elif case == "text/plain":
        headers["Content-Type"] = "text/plain"
    elif case == "no content type":
        del headers["Content-Type"]
    elif case == "malformed JSON":
        body = b'{"path": "/x.csv"'
        headers = signed_headers(secret, event, body)
    elif case == "JSON array":
        body = b'["/x.csv"]'
        headers = signed_headers(secret, event, body)
    elif case == "path missing":
        body = b'{"file": "/x.csv"}'
        headers = signed_headers(secret, event, body)
    elif case == "path not a string":
        body = b'{"path": 42}'
        headers = signed_headers(secret, event, body)
    elif case == "path empty":
        body = b'{"path": ""}'
        headers = signed_headers(secret, event, body)
    elif case == "unknown event":
        headers = signed_headers(secret, "deleted", body)
    resp = gateway.post("import", body, headers)
    assert (resp.status_code, resp.json()) == (status, {"error": reason})
    assert rows(store) == []
    # the same call, correctly signed, is then accepted: the refusal consumed nothing
    if status in (401, 415):
        again = gateway.post("import", IMPORT_BODY, signed_headers(secret, event, IMPORT_BODY))
        assert again.status_code == 202


def test_unknown_source_is_refused_exactly_like_a_bad_signature(gateway, store, secret):
    bad_sig = gateway.post("import", IMPORT_BODY, signed_headers("whsec_wrong", "uploaded", IMPORT_BODY))
    unknown = gateway.post("nosuchsource", IMPORT_BODY, signed_headers(secret, "uploaded", IMPORT_BODY))
    assert unknown.status_code == bad_sig.status_code == 401
    assert unknown.content == bad_sig.content
    # checks before authentication answer the same for known and unknown sources
    for source in ("import", "nosuchsource"):
        assert gateway.post(source, b"x", {"Content-Type": "text/plain"}).status_code == 415
    assert rows(store) == []


def test_oversized_bodies_are_refused_413_declared_or_streamed(gateway, store, secret):
    big = json.dumps({"path": "x" * 5000}).encode()  # the gateway under test allows 4096 bytes
    resp = gateway.post("import", big, signed_headers(secret, "uploaded", big))
    assert (resp.status_code, resp.json()["error"]) == (413, "body larger than 4096 bytes")

    def chunks():  # no Content-Length: chunked transfer, refused once 4096 bytes are read
        for _ in range(100):
            yield b" " * 1000

    headers = signed_headers(secret, "uploaded", b"")
    resp = gateway.client.post("/hooks/import", content=chunks(), headers=headers)
    assert resp.status_code == 413
    assert rows(store) == []


def test_replay_is_refused_409_also_after_a_restart(store, secret):
    headers = signed_headers(secret, "uploaded", IMPORT_BODY, delivery="once")
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT)) as gw:
        assert gw.post("import", IMPORT_BODY, headers).status_code == 202
        resp = gw.post("import", IMPORT_BODY, headers)
        assert (resp.status_code, resp.json()) == (409, {"error": "replay: delivery id already seen"})
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT)) as gw:  # a new process, same store
        assert gw.post("import", IMPORT_BODY, headers).status_code == 409
        # the same delivery id from another source is not a replay
        other = add_source(store, "operation")
        body = b'{"operation_id": 7}'
        assert gw.post("operation", body, signed_headers(other, "queued", body, delivery="once")
                       ).status_code == 202
    assert [(r["source"], r["delivery_id"]) for r in rows(store)] == [("import", "once"),
                                                                      ("operation", "once")]


def test_concurrent_replays_accept_exactly_one(gateway, store, secret):
    headers = signed_headers(secret, "uploaded", IMPORT_BODY, delivery="raced")
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: gateway.post("import", IMPORT_BODY, headers).status_code,
                              range(32)))
    assert sorted(set(codes)) == [202, 409] and codes.count(202) == 1
    assert len(rows(store)) == 1


def test_operation_queued_schema(store):
    secret = add_source(store, "operation")
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT)) as gw:
        for body, status in [(b'{"operation_id": 12}', 202), (b'{"operation_id": "12"}', 422),
                             (b'{"operation_id": true}', 422), (b"{}", 422)]:
            assert gw.post("operation", body, signed_headers(secret, "queued", body)).status_code == status
    assert [r["payload"] for r in rows(store)] == [{"operation_id": 12, "tenant": "default"}]


def test_rotation_refuses_the_old_secret_and_accepts_the_new_at_once(gateway, store, secret):
    new = rotate_secret(store, "import")
    resp = gateway.post("import", IMPORT_BODY, signed_headers(new, "uploaded", IMPORT_BODY))
    assert resp.status_code == 202  # the gateway re-read the source on the unknown signature
    time.sleep(1.2)  # past the refresh interval: the old secret is gone from the cache
    old = gateway.post("import", IMPORT_BODY, signed_headers(secret, "uploaded", IMPORT_BODY))
    assert old.status_code == 401


def test_rotation_with_grace_keeps_the_old_secret_for_the_grace_period(gateway, store, secret):
    new = rotate_secret(store, "import", grace_seconds=3600)
    for key in (new, secret):
        assert gateway.post("import", IMPORT_BODY, signed_headers(key, "uploaded", IMPORT_BODY)
                            ).status_code == 202
    with store.begin() as conn:  # the grace period ends
        conn.execute(WebhookSource.__table__.update().values(
            previous_valid_until=sa.func.datetime("now", "-1 second"),
            secret_version=WebhookSource.__table__.c.secret_version + 1))
    time.sleep(1.2)
    assert gateway.post("import", IMPORT_BODY, signed_headers(secret, "uploaded", IMPORT_BODY)
                        ).status_code == 401
    assert gateway.post("import", IMPORT_BODY, signed_headers(new, "uploaded", IMPORT_BODY)
                        ).status_code == 202


def test_signature_check_is_constant_time_even_for_unknown_sources(monkeypatch, gateway, secret):
    calls = []
    real = signing.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    gateway.post("import", IMPORT_BODY, signed_headers(secret, "uploaded", IMPORT_BODY))
    gateway.post("nosuchsource", IMPORT_BODY, signed_headers(secret, "uploaded", IMPORT_BODY))
    # each call compared (the unknown source against a dummy key, then again after the re-read)
    assert len(calls) >= 2 and all(a == 71 for a, _ in calls)
    assert signing.signature_matches([b"k"], b"m", "sha256=" + "0" * 64) is False
    assert signing.signature_matches([b"k"], b"m", signing.sign(b"k", "1", "d", "e", b"")) is False
    assert signing.signature_matches([b"x", b"k"], signing.signing_bytes("1", "d", "e", b"{}"),
                                     signing.sign(b"k", "1", "d", "e", b"{}")) is True


def test_secrets_are_encrypted_at_rest_and_never_listed_or_logged(store, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    added = runner.invoke(cli_app, ["webhooks", "add-source", "import"])
    assert added.exit_code == 0, added.output
    first = added.output.strip().splitlines()[-1]
    assert first.startswith("whsec_")
    rotated = runner.invoke(cli_app, ["webhooks", "rotate-secret", "import"])
    assert rotated.exit_code == 0 and "refused from now on" in rotated.output
    second = rotated.output.strip().splitlines()[-1]
    listed = runner.invoke(cli_app, ["webhooks", "list"])
    assert listed.exit_code == 0 and "import" in listed.output and "pam.import.uploaded" in listed.output
    with store.connect() as conn:
        [stored] = conn.execute(sa.select(WebhookSource.__table__.c.secret)).scalars()
    assert stored.startswith("pfv1.") and second not in stored
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT)) as gw:
        gw.post("import", IMPORT_BODY, signed_headers(first, "uploaded", IMPORT_BODY))
        gw.post("import", IMPORT_BODY, signed_headers(second, "uploaded", IMPORT_BODY))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("pamflow.db*"))
    for secret in (first, second):
        assert secret not in listed.output
        assert secret.encode() not in raw
        assert secret not in caplog.text
    assert "refused webhook for source 'import': 401 invalid signature" in caplog.text
    assert runner.invoke(cli_app, ["webhooks", "add-source", "Bad Name"]).exit_code == 1


def _insert_pending(engine, n: int) -> None:
    with engine.begin() as conn:
        for i in range(n):
            conn.execute(T.insert().values(event_id=str(uuid.uuid4()), source="import",
                                           delivery_id=f"d{i}", event="pam.import.uploaded",
                                           payload={"path": f"/f{i}.csv"},
                                           received_at=outbox.utcnow(), attempts=0))


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_concurrent_claims_never_hand_a_row_to_two_forwarders(request, backend):
    engine = request.getfixturevalue(backend)
    _insert_pending(engine, 300)

    def drain(_):
        mine = []
        while batch := outbox.claim(engine, limit=7):
            mine += [r["event_id"] for r in batch]
        return mine

    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(drain, range(4)))
    flat = [i for c in claimed for i in c]
    assert len(flat) == len(set(flat)) == 300
    assert outbox.claim(engine) == []  # all leased; nothing claimable until the leases end
    outbox.release(engine, flat[:5], "test")
    assert sorted(r["event_id"] for r in outbox.claim(engine)) == sorted(flat[:5])


def _prefect_events(api_url: str, prefix: str) -> list[dict]:
    resp = httpx.post(f"{api_url}/events/filter",
                      json={"filter": {"event": {"prefix": [prefix]}}, "limit": 50}, timeout=10)
    resp.raise_for_status()
    return resp.json()["events"]


def _wait(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_outbox_forwards_to_prefect_once_it_is_reachable(store, secret, prefect_server):
    source = f"t{uuid.uuid4().hex[:8]}"
    key = add_source(store, source)
    # Prefect unreachable: accepted anyway, kept in the outbox with the reason
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT, sweep_seconds=0.2)) as gw:
        sent = []
        for i in range(3):
            body = json.dumps({"path": f"/up/{i}.csv"}).encode()
            resp = gw.post(source, body, signed_headers(key, "uploaded", body, delivery=f"x{i}"))
            assert resp.status_code == 422  # no schema for pam.<random>.uploaded
        for i in range(3):
            body = json.dumps({"path": f"/up/{i}.csv"}).encode()
            resp = gw.post("import", body, signed_headers(secret, "uploaded", body, delivery=f"x{i}"))
            assert resp.status_code == 202
            sent.append(resp.json()["event_id"])
        _wait(lambda: all(r["last_error"] for r in rows(store)), what="a failed forward attempt")
        assert all(r["delivered_at"] is None for r in rows(store))
    # a gateway that reaches Prefect delivers what the earlier one left, exactly once
    with RunningGateway(Gateway(store, api_url=prefect_server, sweep_seconds=0.2)) as gw:
        _wait(lambda: all(r["delivered_at"] for r in rows(store)), what="delivery")

        def arrived():
            found = [e for e in _prefect_events(prefect_server, "pam.import.") if e["id"] in sent]
            return found if len(found) == 3 else None

        events = _wait(arrived, what="the events in Prefect")
        assert gw.client.get("/health").json()["outbox_pending"] == 0
    by_id = {e["id"]: e for e in events}
    for i, event_id in enumerate(sent):
        event = by_id[event_id]
        assert event["event"] == "pam.import.uploaded"
        assert event["resource"]["prefect.resource.id"] == f"pam.import.x{i}"
        assert event["payload"] == {"path": f"/up/{i}.csv", "tenant": "default"}
        assert secret not in json.dumps(event)
    assert all(r["attempts"] >= 1 for r in rows(store))  # each came back from the store by a sweep


def test_postgresql_store_accepts_and_refuses_replays(pg_store):
    """On PostgreSQL the outbox is written by the writer thread; same answers, same rows."""
    secret = add_source(pg_store, "import")
    with RunningGateway(Gateway(pg_store, api_url=DEAD_PREFECT)) as gw:
        headers = signed_headers(secret, "uploaded", IMPORT_BODY, delivery="pg-1")
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: gw.post("import", IMPORT_BODY, headers).status_code, range(8)))
        assert sorted(codes) == [202] + [409] * 7
        other = signed_headers(secret, "uploaded", IMPORT_BODY, delivery="pg-2")
        assert gw.post("import", IMPORT_BODY, other).status_code == 202
    assert [r["delivery_id"] for r in rows(pg_store)] == ["pg-1", "pg-2"]


def test_a_source_acts_for_its_tenant_whatever_the_caller_sends(store):
    from pamflow.webhooks.sources import SourceError

    secret = add_source(store, "import", tenant="acme")
    bodies = [{"path": "a.csv", "tenant": "other"}, {"path": "b.csv"}, {"path": "c.csv", "tenant": None}]
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT)) as gw:
        for n, body in enumerate(bodies):
            raw = json.dumps(body).encode()
            resp = gw.post("import", raw, signed_headers(secret, "uploaded", raw, delivery=f"t-{n}"))
            assert resp.status_code == 202, resp.text
    assert [r["payload"]["tenant"] for r in rows(store)] == ["acme"] * 3
    runner = CliRunner()
    added = runner.invoke(cli_app, ["webhooks", "add-source", "crm", "--tenant", "globex"])
    assert added.exit_code == 0 and "for tenant globex" in added.output
    listed = runner.invoke(cli_app, ["webhooks", "list"], env={"COLUMNS": "200"})
    assert "acme" in listed.output and "globex" in listed.output
    with pytest.raises(SourceError, match="invalid tenant"):
        add_source(store, "other", tenant="bad\x01")
    with store.connect() as conn:
        tenants = dict(conn.execute(sa.select(WebhookSource.__table__.c.name,
                                              WebhookSource.__table__.c.tenant)).all())
    assert tenants == {"import": "acme", "crm": "globex"}
