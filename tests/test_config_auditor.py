"""The configuration auditor: a robot's schedule, concurrency limit or paused state changed
through the Prefect API of the real test server reaches real UDP, TCP and TLS syslog
receivers and the audit log; the RFC 5424 lines are safe against hostile robot names."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from pamflow import audit
from pamflow.alerts.config_audit import (
    ACTION,
    audit_configuration,
    deliver_to_syslog,
    robot_config,
)
from pamflow.models import ConfigChange, utcnow
from pamflow.syslog import SyslogError, SyslogMessage, SyslogTarget, format_line, send
from tests.peers.syslog import SyslogReceiver
from tests.peers.tls import self_signed


@pytest.fixture
def receiver(request, tmp_path):
    protocol = request.param
    cert = key = None
    if protocol == "tls":
        cert, key, _ = self_signed(tmp_path, "syslog")
    rx = SyslogReceiver(protocol, cert, key)
    yield rx
    rx.close()


def target_for(rx: SyslogReceiver) -> SyslogTarget:
    return SyslogTarget(host="127.0.0.1", port=rx.port, protocol=rx.protocol,
                        allow_cleartext=rx.protocol != "tls", ca_file=rx.ca_file,
                        hostname="pamflow-test")


# ------------------------------------------------------------------ RFC 5424 formatting
def test_line_is_rfc5424_with_escaped_structured_data():
    target = SyslogTarget(host="h", facility="local4", app_name="pamflow", hostname="node 1")
    line = format_line(target, SyslogMessage(
        text="robot x: paused changed\nfake line <13>1 injected", msgid="CONFIG_CHANGE",
        data={"robot": 'a"b]c\\d', "who": "ü"}, timestamp=utcnow()), procid=42).decode()
    assert line.startswith("<165>1 ")  # local4 (20) * 8 + notice (5)
    head = line.split(" ")
    assert head[2] == "node_1" and head[3] == "pamflow" and head[4] == "42"
    assert head[5] == "CONFIG_CHANGE"
    assert '[pamflow@32473 robot="a\\"b\\]c\\\\d" who="ü"]' in line
    assert "\n" not in line and "\\x0a" in line


def test_oversized_values_are_cut_at_the_limit_and_stay_utf8():
    target = SyslogTarget(host="h")
    line = format_line(target, SyslogMessage(text="é" * 5000, data={"v": "x" * 100}),
                       limit=2048)
    assert len(line) <= 2048
    line.decode("utf-8")
    huge = format_line(target, SyslogMessage(text="t", data={"v": "x" * 9000}), limit=2048)
    assert len(huge) <= 2048
    huge.decode("utf-8")


def test_cleartext_needs_an_explicit_opt_in_and_bad_settings_are_named():
    with pytest.raises(SyslogError, match="cleartext"):
        SyslogTarget(host="127.0.0.1", port=514, protocol="udp").check()
    with pytest.raises(SyslogError, match="facility"):
        SyslogTarget(host="h", facility="nope").check()
    with pytest.raises(SyslogError, match="protocol"):
        SyslogTarget(host="h", protocol="http").check()


def test_tls_receiver_with_an_untrusted_certificate_is_refused(tmp_path):
    cert, key, _ = self_signed(tmp_path, "rx")
    rx = SyslogReceiver("tls", cert, key)
    try:
        with pytest.raises(SyslogError, match="TLS failed"):
            send(SyslogTarget(host="127.0.0.1", port=rx.port), [SyslogMessage(text="x")])
        assert rx.lines == []
    finally:
        rx.close()


# ------------------------------------------------------------------ domain, no Prefect
def _deployment(dep_id: str, name: str, cron: str = "0 3 * * *", limit: int | None = 1,
                paused: bool = False) -> dict:
    return {"id": dep_id, "name": name, "paused": paused,
            "schedules": [{"schedule": {"cron": cron, "timezone": "UTC"}, "active": True}],
            "global_concurrency_limit": None if limit is None else {"limit": limit},
            "concurrency_options": {"collision_strategy": "CANCEL_NEW"}}


def test_changes_wait_for_an_unreachable_receiver_and_are_sent_once(store):
    audit_configuration(store, [robot_config(_deployment("d1", "robot-a"), "f")])  # baseline
    audit_configuration(store, [robot_config(_deployment("d1", "robot-a", limit=4), "f")])
    rx = SyslogReceiver("tcp")
    port = rx.port
    rx.close()  # nobody listens on the port now
    down = deliver_to_syslog(store, SyslogTarget(host="127.0.0.1", port=port, protocol="tcp",
                                                 allow_cleartext=True, timeout=2))
    assert (down.sent, down.pending) == (0, 1) and "cannot connect" in (down.error or "")
    rx = SyslogReceiver("tcp")
    try:
        up = deliver_to_syslog(store, target_for(rx))
        assert (up.sent, up.pending) == (1, 0)
        assert rx.wait_for("robot-a", 'field="concurrency_limit"', 'before="1"', 'after="4"')
        assert deliver_to_syslog(store, target_for(rx)).sent == 0
    finally:
        rx.close()


def test_new_and_deleted_robots_are_changes_too(store):
    audit_configuration(store, [robot_config(_deployment("d1", "robot-a"), "f")])
    made = audit_configuration(store, [robot_config(_deployment("d1", "robot-a"), "f"),
                                       robot_config(_deployment("d2", "robot-b"), "f")])
    assert [(c.robot, c.field, c.before) for c in made.changes] == [("robot-b", "deployment", None)]
    gone = audit_configuration(store, [robot_config(_deployment("d2", "robot-b"), "f")])
    assert [(c.robot, c.field, c.after) for c in gone.changes] == [("robot-a", "deployment",
                                                                     "deleted")]


# ------------------------------------------------------------------ against the Prefect server
@pytest.mark.parametrize("receiver", ["udp", "tcp", "tls"], indirect=True)
def test_schedule_limit_and_pause_changes_reach_syslog_and_the_audit_log(
        store, prefect_server, prefect_client_sync, receiver):
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate
    from prefect.client.schemas.schedules import CronSchedule

    from blocks.syslog_target import SyslogTargetBlock
    from flows.alerts import configuration_auditor

    client = prefect_client_sync
    tag = uuid.uuid4().hex[:8]
    robot = f"probe-robot-{tag}"
    block = f"syslog-{receiver.protocol}-{tag}"
    SyslogTargetBlock(host="127.0.0.1", port=receiver.port, protocol=receiver.protocol,
                      allow_cleartext=receiver.protocol != "tls", ca_file=receiver.ca_file,
                      hostname="pamflow-test").save(block)
    flow_id = client.create_flow_from_name(f"audit-probe-{tag}")
    dep_id = client.create_deployment(
        flow_id=flow_id, name=robot, entrypoint="flows/alerts.py:configuration_auditor",
        schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron="0 3 * * *"))],
        concurrency_limit=1, paused=False)

    first = configuration_auditor(lifetime_s=0, syslog_block=block)  # the baseline
    assert not [c for c in first if c["robot"] == robot]

    schedule_id = client.read_deployment(dep_id).schedules[0].id
    client.update_deployment_schedule(dep_id, schedule_id,
                                      schedule=CronSchedule(cron="30 4 * * *"))
    client.update_deployment(dep_id, DeploymentUpdate(concurrency_limit=3))
    client.pause_deployment(dep_id)

    changes = configuration_auditor(lifetime_s=0, syslog_block=block)
    mine = {c["field"]: c for c in changes if c["robot"] == robot}
    assert set(mine) == {"schedule", "concurrency_limit", "paused"}
    assert (mine["schedule"]["before"], mine["schedule"]["after"]) == (
        'cron "0 3 * * *" UTC', 'cron "30 4 * * *" UTC')
    assert (mine["concurrency_limit"]["before"], mine["concurrency_limit"]["after"]) == ("1", "3")
    assert (mine["paused"]["before"], mine["paused"]["after"]) == ("false", "true")

    for field, before, after in (("schedule", "0 3 * * *", "30 4 * * *"),
                                 ("concurrency_limit", "1", "3"), ("paused", "false", "true")):
        lines = receiver.wait_for(f'robot="{robot}"', f'field="{field}"')
        assert len(lines) == 1, (field, receiver.text())
        assert before in lines[0] and after in lines[0]
        assert lines[0].startswith("<133>1 ") and " pamflow-test pamflow " in lines[0]
        assert " CONFIG_CHANGE [pamflow@32473 " in lines[0]

    with Session(store) as db:
        rows = audit.entries(db, action=ACTION, entity="robot", entity_id=robot)
        assert sorted(r.detail["field"] for r in rows) == ["concurrency_limit", "paused",
                                                           "schedule"]
        assert all(r.detail["before"] and r.detail["after"] and r.detail["at"] for r in rows)
        assert audit.check_chain(db).intact
        pending = db.exec(select(ConfigChange).where(ConfigChange.syslog_state == "pending"))
        assert pending.all() == []

    # nothing changed since: the next pass sends nothing again
    assert not [c for c in configuration_auditor(lifetime_s=0, syslog_block=block)
                if c["robot"] == robot]
    assert len(receiver.wait_for(f'robot="{robot}"', timeout=1)) == 3
    client.delete_deployment(dep_id)


def test_a_pause_undone_before_the_next_pass_is_recorded_from_prefect_events(
        store, prefect_server, prefect_client_sync):
    """PATCH /deployments/{id} emits prefect.deployment.updated with the paused field: a
    pause and resume between two passes leave the snapshot unchanged but both are audited."""
    import time

    from prefect.client.schemas.actions import DeploymentUpdate

    from flows.alerts import configuration_auditor

    client = prefect_client_sync
    tag = uuid.uuid4().hex[:8]
    robot = f"event-robot-{tag}"
    rx = SyslogReceiver("udp")
    try:
        from blocks.syslog_target import SyslogTargetBlock

        block = f"syslog-events-{tag}"
        SyslogTargetBlock(host="127.0.0.1", port=rx.port, protocol="udp",
                          allow_cleartext=True).save(block)
        flow_id = client.create_flow_from_name(f"event-probe-{tag}")
        dep_id = client.create_deployment(flow_id=flow_id, name=robot,
                                          entrypoint="flows/alerts.py:configuration_auditor")
        configuration_auditor(lifetime_s=0, syslog_block=block)  # the baseline
        client.update_deployment(dep_id, DeploymentUpdate(paused=True))
        client.update_deployment(dep_id, DeploymentUpdate(paused=False))

        since = utcnow() - timedelta(minutes=5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Prefect stores events asynchronously
            answer = client._client.post("/events/filter", json={"filter": {
                "occurred": {"since": since.isoformat()},
                "event": {"name": ["prefect.deployment.updated"]},
                "resource": {"id": [f"prefect.deployment.{dep_id}"]}}, "limit": 50})
            if len(answer.json()["events"]) >= 2:
                break
            time.sleep(0.5)
        changes = [c for c in configuration_auditor(lifetime_s=0, syslog_block=block)
                   if c["robot"] == robot]
        assert [(c["field"], c["before"], c["after"], c["source"]) for c in changes] == [
            ("paused", "false", "true", "event"), ("paused", "true", "false", "event")]
        assert len(rx.wait_for(f'robot="{robot}"', 'field="paused"')) >= 1
        client.delete_deployment(dep_id)
    finally:
        rx.close()


def test_a_hostile_robot_name_gives_one_safe_line(store, prefect_server, prefect_client_sync):
    from flows.alerts import configuration_auditor

    client = prefect_client_sync
    tag = uuid.uuid4().hex[:8]
    rx = SyslogReceiver("tcp")
    try:
        from blocks.syslog_target import SyslogTargetBlock

        block = f"syslog-hostile-{tag}"
        SyslogTargetBlock(host="127.0.0.1", port=rx.port, protocol="tcp",
                          allow_cleartext=True).save(block)
        configuration_auditor(lifetime_s=0, syslog_block=block)  # the baseline
        nasty = f'evil-{tag}"] x="y\n[13]1 - - - - - forged ' + "é" * 3000
        flow_id = client.create_flow_from_name(f"hostile-probe-{tag}")
        dep_id = client.create_deployment(flow_id=flow_id, name=nasty,
                                          entrypoint="flows/alerts.py:configuration_auditor")
        changes = [c for c in configuration_auditor(lifetime_s=0, syslog_block=block)
                   if c["robot"].startswith(f"evil-{tag}")]
        assert [c["field"] for c in changes] == ["deployment"]
        lines = rx.wait_for(f"evil-{tag}")
        assert len(lines) == 1
        assert "\n" not in lines[0]
        assert f'robot="evil-{tag}\\"\\] x=\\"y\\\\x0a[13\\]1 ' in lines[0]  # structured data
        assert f'robot evil-{tag}"] x="y\\x0a[13]1 ' in lines[0]  # the free text
        assert len(lines[0].encode()) <= 8192
        client.delete_deployment(dep_id)
    finally:
        rx.close()


def test_the_service_run_notices_a_change_made_while_it_watches(store, prefect_server,
                                                                prefect_client_sync):
    """One flow run polls for its lifetime: a pause made while it runs reaches syslog
    before the run ends."""
    import threading
    import time

    from blocks.syslog_target import SyslogTargetBlock
    from flows.alerts import configuration_auditor

    client = prefect_client_sync
    tag = uuid.uuid4().hex[:8]
    robot = f"watched-robot-{tag}"
    rx = SyslogReceiver("udp")
    try:
        block = f"syslog-watch-{tag}"
        SyslogTargetBlock(host="127.0.0.1", port=rx.port, protocol="udp",
                          allow_cleartext=True).save(block)
        flow_id = client.create_flow_from_name(f"watch-probe-{tag}")
        dep_id = client.create_deployment(flow_id=flow_id, name=robot,
                                          entrypoint="flows/alerts.py:configuration_auditor")
        configuration_auditor(lifetime_s=0, syslog_block=block)  # the baseline
        arrived: list[bool] = []

        def pause_then_watch() -> None:
            from prefect.client.orchestration import get_client

            time.sleep(1.0)
            with get_client(sync_client=True) as other:
                other.pause_deployment(dep_id)
            arrived.append(bool(rx.wait_for(f'robot="{robot}"', 'field="paused"', timeout=30)))

        watcher = threading.Thread(target=pause_then_watch)
        watcher.start()
        changes = configuration_auditor(lifetime_s=8, poll_s=0.5, syslog_block=block)
        watcher.join()
        assert arrived == [True]
        assert [(c["field"], c["after"]) for c in changes if c["robot"] == robot] == [
            ("paused", "true")]
        client.delete_deployment(dep_id)
    finally:
        rx.close()
