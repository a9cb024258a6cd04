"""Services and listeners (seed 002, Appendix I) against real sockets and real services:
loopback listeners opened and closed through LISTEN, ESTABLISHED, CLOSE-WAIT, FIN-WAIT-2,
TIME-WAIT and CLOSED; an aiosmtpd relay, the webhook gateway, the store and the Prefect
server with a work pool whose worker comes and goes."""

from __future__ import annotations

import socket
import time
import uuid

import pytest
from sqlmodel import Session, col, select

from pamflow.models import AuditLog, Notification
from pamflow.monitors.listeners import (
    ServiceCheck,
    check_listeners_and_services,
    database_alive,
    http_health,
    listener_state,
    smtp_banner,
    tcp_sockets,
)
from pamflow.monitors.settings import Connector, Listener
from pamflow.platform import free_port


def notes(engine) -> list[str]:
    with Session(engine) as db:
        return [n.subject for n in db.exec(select(Notification).order_by(col(Notification.id)))]


def wait_state(listener: Listener, expected: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (seen := listener_state(listener, tcp_sockets())) != expected:
        assert time.monotonic() < deadline, f"{listener.name}: still {seen}, never {expected}"
        time.sleep(0.05)


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_a_real_listener_goes_through_the_appendix_states(backend, request):
    store = request.getfixturevalue(backend)
    port = free_port()
    app = Listener(name="app", port=port)
    elsewhere = Listener(name="app-on-other-address", port=port, host="127.0.0.2")
    never = Listener(name="never-opened", port=free_port())
    watched = [app, elsewhere, never]
    seen: list[dict[str, tuple[str, str | None]]] = []

    def look(expected: str) -> None:
        wait_state(app, expected)
        report = check_listeners_and_services(store, watched, {}, host="pam1")
        seen.append({r.name: (r.state, r.alert) for r in report.results})

    server = listen(port)
    look("LISTEN")
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    server.close()
    look("ESTABLISHED")
    client.close()  # the peer closed: this side waits for its application to close
    look("CLOSE-WAIT")
    conn.close()
    look("CLOSED")
    server = listen(port)
    look("LISTEN")
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    server.close()
    conn.close()  # this side closes first
    look("FIN-WAIT-2")
    client.close()
    look("TIME-WAIT")

    changed = "Listener state changed"
    assert [s["app"] for s in seen] == [
        ("LISTEN", None), ("ESTABLISHED", changed), ("CLOSE-WAIT", changed), ("CLOSED", changed),
        ("LISTEN", changed), ("FIN-WAIT-2", changed), ("TIME-WAIT", changed)]
    # first look at a listener that is not listening is notified; then only changes
    assert [s["never-opened"] for s in seen] == [("CLOSED", changed)] + [("CLOSED", None)] * 6
    assert seen[0]["app-on-other-address"] == ("CLOSED", changed)
    subjects = notes(store)
    assert subjects[:2] == ["Listener app-on-other-address on pam1 is CLOSED",
                            "Listener never-opened on pam1 is CLOSED"]
    assert "Listener app on pam1 is TIME-WAIT" in subjects
    with Session(store) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action == "monitor.listener.state")
                       .where(AuditLog.entity_id == "app")).all()
    assert [(r.detail["previous"], r.detail["state"]) for r in rows][-1] == ("FIN-WAIT-2", "TIME-WAIT")


@pytest.fixture
def smtp_relay():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller
    if controller._thread is not None:  # the test may have stopped it already
        controller.stop()


def test_platform_services_active_inactive_disabled(store, tmp_path, smtp_relay):
    from pamflow.db import make_engine
    from pamflow.webhooks.app import Gateway
    from tests.test_webhooks import DEAD_PREFECT, RunningGateway

    relay = f"127.0.0.1:{smtp_relay.port}"
    broken_store = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    assert smtp_banner(relay).state == "ACTIVE"
    assert smtp_banner(None) == ServiceCheck("DISABLED", "no SMTP relay configured")
    assert database_alive(store).state == "ACTIVE"
    assert database_alive(broken_store).state == "INACTIVE"

    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT, max_body=4096)) as gw:
        services = {"gateway": lambda: http_health(gw.url + "/health"),
                    "smtp-relay": lambda: smtp_banner(relay),
                    "database": lambda: database_alive(store),
                    "exploding": lambda: 1 / 0}  # a probe that fails says the service is down
        first = check_listeners_and_services(store, [], services, host="pam1")
        assert {r.name: (r.state, r.alert) for r in first.results} == {
            "gateway": ("ACTIVE", None), "smtp-relay": ("ACTIVE", None),
            "database": ("ACTIVE", None), "exploding": ("INACTIVE", "Service state changed")}
    smtp_relay.stop()
    services["database"] = lambda: database_alive(broken_store)
    second = check_listeners_and_services(store, [], services, host="pam1")
    assert {r.name: (r.state, r.previous) for r in second.results if r.alert} == {
        "gateway": ("INACTIVE", "ACTIVE"), "smtp-relay": ("INACTIVE", "ACTIVE"),
        "database": ("INACTIVE", "ACTIVE")}
    assert "ZeroDivisionError" in first.results[3].detail
    assert sorted(notes(store)) == sorted([
        "Service exploding on pam1 is INACTIVE", "Service gateway on pam1 is INACTIVE",
        "Service smtp-relay on pam1 is INACTIVE", "Service database on pam1 is INACTIVE"])


def test_flow_watches_prefect_server_worker_and_listeners(store, prefect_server,
                                                          prefect_client_sync):
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    from blocks.monitor_thresholds import MonitorThresholdsBlock
    from flows.monitors import system_monitor

    pool = f"monitor-pool-{uuid.uuid4().hex[:8]}"
    prefect_client_sync.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    port = free_port()
    server = listen(port)
    block = f"monitor-services-{uuid.uuid4().hex[:8]}"
    MonitorThresholdsBlock(disk_mounts=(), work_pool=pool, gateway_url=None,
                           listeners=(Listener(name="app", port=port),),
                           connectors=(Connector(name="tunnel", host="127.0.0.1", port=port,
                                                 heartbeat_interval_seconds=1),)).save(block)

    first = system_monitor(settings=block)
    assert first["services"] == {"prefect-server": "ACTIVE", "worker": "INACTIVE",
                                 "gateway": "DISABLED", "database": "ACTIVE",
                                 "smtp-relay": "DISABLED"}
    assert first["listeners"] == {"app": "LISTEN"} and first["connectors"] == {"tunnel": "ok"}
    assert [a.split(":")[0] for a in first["alerts"] if "service" in a] == [
        "Service state changed", "Service state changed", "Service state changed"]

    prefect_client_sync.send_worker_heartbeat(pool, "worker-1")
    server.close()
    wait_state(Listener(name="app", port=port), "CLOSED")
    second = system_monitor(settings=block)
    assert second["services"]["worker"] == "ACTIVE" and second["listeners"] == {"app": "CLOSED"}
    time.sleep(1.1)  # past the tunnel's heartbeat interval
    prefect_client_sync.send_worker_heartbeat(pool, "worker-1")
    third_alerts = system_monitor(settings=block)["alerts"]
    assert sorted(a for a in second["alerts"] if not a.startswith("Tunnel")) == [
        "Listener state changed: listener app LISTEN -> CLOSED",
        "Service state changed: service worker INACTIVE -> ACTIVE"]
    # the endpoint closed: failed once its 1 s interval has passed (in either run), once
    assert [a for a in second["alerts"] + third_alerts if a.startswith("Tunnel")] == \
        ["Tunnel failed: tunnel"]

    prefect_client_sync.send_worker_heartbeat(pool, "worker-1")
    prefect_client_sync.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
    fourth = system_monitor(settings=block)
    assert fourth["services"]["worker"] == "DISABLED" and fourth["connectors"] == {"tunnel": "failed"}
    assert fourth["alerts"] == ["Service state changed: service worker ACTIVE -> DISABLED"]


def test_a_block_edited_into_bad_settings_is_refused_with_the_reason(prefect_server,
                                                                     prefect_client_sync):
    """Someone with API access saves hostile values into the block: the monitors refuse
    them (naming the field) instead of watching "../" or a cleartext URL with a password."""
    from prefect.client.schemas.actions import BlockDocumentCreate

    from blocks.monitor_thresholds import MonitorThresholdsBlock, load_monitor_settings
    from pamflow.monitors import SettingsError

    MonitorThresholdsBlock.register_type_and_schema()
    block_type = prefect_client_sync.read_block_type_by_slug("pamflow-monitor-thresholds")
    schema = prefect_client_sync.get_most_recent_block_schema_for_block_type(block_type.id)
    assert load_monitor_settings(f"no-such-block-{uuid.uuid4().hex[:6]}").cpu_high == 70  # defaults
    for data, field in [({"disk_mounts": ["../../etc"]}, "disk_mounts"),
                        ({"gateway_url": "http://admin:s3cret@gw:4280"}, "gateway_url"),
                        ({"listeners": [{"name": "x" * 500, "port": 1}]}, "listeners")]:
        name = f"hostile-{uuid.uuid4().hex[:8]}"
        prefect_client_sync.create_block_document(BlockDocumentCreate(
            name=name, data=data, block_type_id=block_type.id, block_schema_id=schema.id))
        with pytest.raises(SettingsError) as err:
            load_monitor_settings(name)
        assert f"block {name!r} is not valid: {field}" in str(err.value)
        assert "s3cret" not in str(err.value)
    good = f"good-{uuid.uuid4().hex[:8]}"
    MonitorThresholdsBlock(cpu_high=55, listeners=(Listener(name="app", port=8080),)).save(good)
    loaded = load_monitor_settings(good)
    assert loaded.cpu_high == 55 and loaded.listeners == (Listener(name="app", port=8080),)
