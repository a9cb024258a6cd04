"""Connectivity test robot: real sockets on 127.0.0.1, the real sshd, a real Prefect server."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from sqlmodel import Session, select

from pamflow import connectivity
from pamflow.connectivity import Target, check_devices, probe, prober
from pamflow.models import AuditLog, Credential, Device, Notification, utcnow
from pamflow.vault import credential_aad, vault


def listening() -> socket.socket:
    """A listening port that never accepts: the kernel completes handshakes into its queue."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def refusing() -> socket.socket:
    """A bound port nobody listens on: connections are refused (and the port stays ours)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


class AcceptThenClose:
    """A port that accepts each connection and closes it at once, without a byte."""

    def __init__(self) -> None:
        self.sock = listening()
        self.port = port_of(self.sock)
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


class Switch:
    """One port we open (listen) and close (refuse) at will, keeping its number."""

    def __init__(self) -> None:
        self.sock = listening()
        self.port = port_of(self.sock)

    def close(self) -> None:
        self.sock.close()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))

    def open(self) -> None:
        self.sock.listen(1024)

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def ports():
    """``open`` and ``closed`` ports on 127.0.0.1, released afterwards."""
    opened, closed = listening(), refusing()
    yield port_of(opened), port_of(closed)
    opened.close()
    closed.close()


FAST = {"connect_timeout": 2.0, "banner_timeout": 3.0}


@pytest.fixture(params=["epoll", "coroutines"])
def engine_kind(request, monkeypatch):
    """Both probe engines: the epoll pump (Linux) and the portable coroutine per endpoint."""
    monkeypatch.setattr(prober, "USE_EPOLL", request.param == "epoll")
    return request.param


def add_device(engine, name: str, address: str = "127.0.0.1", ports=(), **fields) -> int:
    with Session(engine) as db:
        device = Device(name=name, address=address, ports=list(ports), **fields)
        db.add(device)
        db.commit()
        return device.id


def device(engine, device_id: int) -> Device:
    with Session(engine) as db:
        return db.get(Device, device_id)


def notifications_of(engine) -> list[Notification]:
    with Session(engine) as db:
        return list(db.exec(select(Notification).order_by(Notification.id)))


# ---- the prober ------------------------------------------------------------------------


def test_open_and_closed_ports_any_and_all_rules(ports, engine_kind):
    open_port, closed_port = ports
    any_rule, all_rule, only_closed = probe([
        Target(1, "web", "127.0.0.1", (open_port, closed_port)),
        Target(2, "strict", "127.0.0.1", (open_port, closed_port), rule="all"),
        Target(3, "down", "127.0.0.1", (closed_port,)),
    ], **FAST)
    assert [p.state for p in any_rule.ports] == ["open", "refused"]
    assert any_rule.reachable and any_rule.reason is None
    assert f"{closed_port} refused" in any_rule.detail()
    assert not all_rule.reachable
    assert "rule: all" in all_rule.reason and str(closed_port) in all_rule.reason
    assert not only_closed.reachable and "refused" in only_closed.reason


def test_ssh_banner_is_read_from_the_real_sshd(sshd, engine_kind):
    (result,) = probe([Target(1, "bastion", "127.0.0.1", (sshd.port,), frozenset({22, sshd.port}))],
                      **FAST)
    assert result.reachable
    assert result.ports[0].banner.startswith("SSH-2.0-OpenSSH")
    assert result.banner in result.detail()


def test_ssh_port_comes_from_the_device_settings(sshd):
    target = connectivity.target_of(7, "bastion", "127.0.0.1", [sshd.port], {"ssh_port": sshd.port})
    assert sshd.port in target.ssh_ports
    (result,) = probe([target], **FAST)
    assert result.banner.startswith("SSH-2.0-OpenSSH")


def test_a_port_that_accepts_then_closes_answers_but_has_no_banner(engine_kind):
    server = AcceptThenClose()
    try:
        plain, ssh = probe([
            Target(1, "plain", "127.0.0.1", (server.port,)),
            Target(2, "ssh", "127.0.0.1", (server.port,), frozenset({server.port})),
        ], **FAST)
    finally:
        server.close()
    assert server.accepted == 2
    assert plain.reachable and ssh.reachable
    assert ssh.ports[0].banner is None
    assert ssh.ports[0].reason == "closed without banner"


def test_a_silent_ssh_port_answers_with_no_banner_reason(ports, engine_kind):
    open_port, _ = ports  # listens but never accepts nor speaks
    (result,) = probe([Target(1, "mute", "127.0.0.1", (open_port,), frozenset({open_port}))],
                      connect_timeout=2.0, banner_timeout=0.3)
    assert result.reachable
    assert result.ports[0].reason == "no SSH banner within 0.3s"


def test_an_unresolvable_hostname_is_unreachable_and_loses_nothing_else(ports, engine_kind):
    open_port, _ = ports
    ghost, alive = probe([
        Target(1, "ghost", "no-such-host.invalid", (22, 3389)),
        Target(2, "alive", "127.0.0.1", (open_port,)),
    ], **FAST)
    assert not ghost.reachable
    assert [p.state for p in ghost.ports] == ["unresolved", "unresolved"]
    assert ghost.reason.startswith("name no-such-host.invalid not resolved")
    assert alive.reachable


def test_a_port_that_never_answers_times_out(ports, engine_kind):
    """A listener whose accept queue is full drops new SYNs: the connect gets no answer."""
    open_port, closed_port = ports
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    silent_port = port_of(full)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", silent_port))
        fillers.append(c)
    time.sleep(0.2)
    try:
        silent, mixed = probe([
            Target(1, "silent", "127.0.0.1", (silent_port,)),
            Target(2, "mixed", "127.0.0.1", (silent_port, open_port)),
        ], connect_timeout=0.5)
    finally:
        for c in fillers:
            c.close()
        full.close()
    assert not silent.reachable and silent.reason == f"{silent_port} timeout (no answer within 0.5s)"
    assert mixed.reachable and [p.state for p in mixed.ports] == ["timeout", "open"]


def test_many_endpoints_through_a_small_window(ports, engine_kind):
    """More endpoints than connections in flight: every one is probed, in order."""
    open_port, closed_port = ports
    targets = [Target(i, f"d{i}", "127.0.0.1", (open_port, closed_port) if i % 2 else (closed_port,))
               for i in range(60)]
    results = probe(targets, concurrency=3, **FAST)
    assert [r.target.name for r in results] == [f"d{i}" for i in range(60)]
    assert [r.reachable for r in results] == [bool(i % 2) for i in range(60)]
    assert all(len(r.ports) == len(r.target.ports) for r in results)


def test_malformed_ports_are_ignored_and_named():
    target = connectivity.target_of(1, "odd", "127.0.0.1", [22, "22", "ssh", 70000, 0, True, "443"])
    assert target.ports == (22, 443)
    assert target.invalid_ports == ("ssh", "70000", "0", "True")


def test_probe_works_inside_a_running_event_loop(ports):
    import asyncio

    open_port, _ = ports

    async def main():
        return probe([Target(1, "a", "127.0.0.1", (open_port,))], **FAST)

    (result,) = asyncio.run(main())
    assert result.reachable


# ---- the store -------------------------------------------------------------------------


def test_batch_records_state_and_skips_inactive_and_portless(store, ports):
    open_port, closed_port = ports
    up = add_device(store, "up", "127.0.0.1", [open_port, closed_port])
    down = add_device(store, "down", "127.0.0.2", [closed_port])
    ghost = add_device(store, "ghost", "no-such-host.invalid", [22])
    portless = add_device(store, "portless", "127.0.0.3", [])
    inactive = add_device(store, "inactive", "127.0.0.4", [closed_port], active=False)

    report = check_devices(store, **FAST)

    assert (report.devices, report.tested, report.reachable, report.unreachable, report.no_ports) == (
        4, 3, 1, 2, 1)
    assert sorted(r["name"] for r in report.unreachable_devices) == ["down", "ghost"]
    assert report.lost == [] and report.restored == []
    u, d, g = device(store, up), device(store, down), device(store, ghost)
    assert u.connectivity == "reachable" and u.last_seen_at == u.last_checked_at is not None
    assert f"{open_port} open" in u.connectivity_detail
    assert d.connectivity == "unreachable" and d.last_seen_at is None and d.last_checked_at
    assert g.connectivity == "unreachable" and "not resolved" in g.connectivity_detail
    for untouched in (portless, inactive):
        row = device(store, untouched)
        assert row.connectivity == "unknown" and row.last_checked_at is None
    # the first check is silent: nothing was lost or restored
    assert notifications_of(store) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request):
    return request.getfixturevalue("store" if request.param == "sqlite" else "pg_store")


def test_a_state_change_queues_one_notification_each_way(any_store):
    engine = any_store
    switch = Switch()
    try:
        dev = add_device(engine, "db01", "127.0.0.1", [switch.port])
        check_devices(engine, **FAST)  # unknown -> reachable: silent
        first_seen = device(engine, dev).last_seen_at
        assert first_seen is not None

        switch.close()
        lost = check_devices(engine, **FAST)
        again = check_devices(engine, **FAST)  # still down: no second notification
        switch.open()
        restored = check_devices(engine, **FAST)
    finally:
        switch.stop()

    assert lost.lost == ["db01"] and again.lost == [] and restored.restored == ["db01"]
    sent = notifications_of(engine)
    assert [n.type for n in sent] == ["Lost of connectivity", "Connectivity restored"]
    assert sent[0].context["device_id"] == dev and "refused" in sent[0].context["reason"]
    assert "db01" in sent[0].subject and "db01" in sent[1].subject
    with Session(engine) as db:
        actions = [a.action for a in db.exec(select(AuditLog).order_by(AuditLog.id))]
    assert actions == ["connectivity.lost", "connectivity.restored"]
    row = device(engine, dev)
    assert row.connectivity == "reachable" and row.last_seen_at > first_seen


def test_a_change_already_recorded_by_another_run_is_not_notified_twice(store):
    switch = Switch()
    try:
        dev = add_device(store, "app01", "127.0.0.1", [switch.port])
        check_devices(store, **FAST)
        switch.close()
        targets, _ = connectivity.load_targets(store)
        results = probe(targets, **FAST)
        # two overlapping runs write the same observation: one notification
        first = connectivity.record_results(store, results)
        second = connectivity.record_results(store, results)
    finally:
        switch.stop()
    assert first.lost == ["app01"] and second.lost == []
    assert [n.type for n in notifications_of(store)] == ["Lost of connectivity"]
    assert device(store, dev).connectivity == "unreachable"


def test_maintenance_mode_is_recorded_and_audited_but_not_notified(store):
    switch = Switch()
    try:
        dev = add_device(store, "maint", "127.0.0.1", [switch.port], maintenance_mode=True)
        check_devices(store, **FAST)
        switch.close()
        report = check_devices(store, **FAST)
    finally:
        switch.stop()
    assert report.lost == ["maint"]
    assert device(store, dev).connectivity == "unreachable"
    assert notifications_of(store) == []
    with Session(store) as db:
        (entry,) = db.exec(select(AuditLog)).all()
    assert entry.action == "connectivity.lost" and entry.detail["notified"] is False


def test_a_local_failure_is_not_recorded_as_lost(store, ports):
    """Out of file descriptors here says nothing about the device: its state is kept."""
    open_port, _ = ports
    dev = add_device(store, "steady", "127.0.0.1", [open_port])
    check_devices(store, **FAST)
    before = device(store, dev)
    (target,), _ = connectivity.load_targets(store)
    local = connectivity.verdict(
        target, [connectivity.PortResult(open_port, connectivity.LOCAL, "local socket: Too many open files")],
        utcnow())
    report = connectivity.record_results(store, [local])
    assert local.inconclusive and report.inconclusive == 1 and report.tested == 0
    after = device(store, dev)
    assert after.connectivity == "reachable" and after.last_checked_at == before.last_checked_at
    assert notifications_of(store) == []


def test_batches_cover_active_devices_by_id_range(store, ports):
    _, closed_port = ports
    ids = [add_device(store, f"d{i}", f"127.0.1.{i}", [closed_port]) for i in range(1, 6)]
    add_device(store, "off", "127.0.1.99", [closed_port], active=False)
    batches = connectivity.plan_batches(store, 2)
    assert batches == [(ids[0], ids[1]), (ids[2], ids[3]), (ids[4], ids[4])]
    tested = sum(check_devices(store, a, b, **FAST).tested for a, b in batches)
    assert tested == 5
    with pytest.raises(ValueError, match="batch_size"):
        connectivity.plan_batches(store, 0)


# ---- the Prefect flow ------------------------------------------------------------------


def _flow_run_filter(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def test_flow_against_the_prefect_server(prefect_server, prefect_client_sync, store, ports, sshd):
    from flows.connectivity import connectivity_test

    open_port, closed_port = ports
    secret = "Sup3r-S3cret-do-not-publish"
    bastion = add_device(store, "bastion", "127.0.0.1", [sshd.port], settings={"ssh_port": sshd.port})
    add_device(store, "web", "localhost", [open_port, closed_port])  # resolved by name
    add_device(store, "dead", "127.0.0.3", [closed_port])
    add_device(store, "ghost", "no-such-host.invalid", [22])
    add_device(store, "portless", "127.0.0.4", [])
    vault()  # opened before the session holds SQLite's write lock
    with Session(store) as db:
        cred = Credential(device_id=bastion, username="root")
        db.add(cred)
        db.flush()
        cred.secret = vault().encrypt(secret, credential_aad(cred.id, bastion, "secret"))
        db.add(cred)
        db.commit()
        ciphertext = db.exec(select(Credential.secret)).one()

    state = connectivity_test(batch_size=2, connect_timeout=2.0, banner_timeout=3.0,
                              return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert {k: summary[k] for k in ("devices", "tested", "reachable", "unreachable", "no_ports",
                                    "inconclusive", "lost", "restored", "batches",
                                    "failed_batches")} == {
        "devices": 5, "tested": 4, "reachable": 2, "unreachable": 2, "no_ports": 1, "inconclusive": 0,
        "lost": 0, "restored": 0, "batches": 3, "failed_batches": []}
    assert "SSH-2.0-OpenSSH" in device(store, bastion).connectivity_detail

    flow_run_id = state.state_details.flow_run_id
    artifacts = prefect_client_sync.read_artifacts(flow_run_filter=_flow_run_filter(flow_run_id))
    by_type = {a.type: a for a in artifacts}
    assert set(by_type) == {"progress", "table", "markdown"}
    assert float(by_type["progress"].data) == 100.0
    table = by_type["table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert sorted(r["name"] for r in rows) == ["dead", "ghost"]
    assert {r["address"] for r in rows} == {"127.0.0.3", "no-such-host.invalid"}
    assert all(r["reason"] for r in rows)
    assert "| 5 | 4 | 2 | 2 | 1 |" in by_type["markdown"].data
    published = json.dumps([a.model_dump(mode="json") for a in artifacts]) + json.dumps(summary)
    assert secret not in published and ciphertext not in published

    # task runs are per batch of devices (3 batches for 5 devices), never per device
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    deadline = time.monotonic() + 60
    while True:
        runs = prefect_client_sync.read_task_runs(
            flow_run_filter=_flow_run_filter(flow_run_id),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="test-devices-")))
        if len(runs) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(runs) == 3
