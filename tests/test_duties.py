"""Duties (issue 15): the minute-level robots' jobs run inside the executor's service
instance, each slot exactly once across instances, failures recorded, idle runs pruned."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from pamflow.models import DutyState, Operation, utcnow
from pamflow.operations import duties
from pamflow.operations.executor import serve
from tests.test_rotation import add_credential, make_device, nasty


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


@pytest.fixture(params=["store", "pg_store"])
def engine(request):
    return request.getfixturevalue(request.param)


def test_the_registry_names_robots_of_prefect_yaml_and_loads_modules():
    import yaml

    from pamflow.platform import REPO_ROOT

    registry = duties.load()
    deployments = {d["name"]: d for d in
                   yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
    for name, duty in registry.items():
        if name == "prune-idle-runs":
            continue  # housekeeping, no robot of its own
        assert name in deployments, name
        # its own cron stays, inactive: the duty does the job
        assert all(not s.get("active", True) for s in deployments[name]["schedules"]), name
        assert duty.host in deployments and "service" in deployments[duty.host]["tags"]
    assert {"expired-password", "operation-executor-retry", "expired-operation-cancellation",
            "password-reservation", "password-reconciliation", "prune-idle-runs"} <= set(registry)
    # no robot of prefect.yaml runs every minute as flow runs of its own any more
    for name, dep in deployments.items():
        for sched in dep.get("schedules") or []:
            if sched.get("active", True):
                assert not sched["cron"].startswith("* "), name


def test_each_slot_runs_once_across_instances(engine, monkeypatch):
    calls = []
    duty = duties.Duty("test-duty", 60, lambda eng: calls.append(1) or [1, 2])
    done = []
    a = duties.DutyRunner(engine, "a", duties={"x": duty}, on_done=lambda d, r: done.append(r))
    b = duties.DutyRunner(engine, "b", duties={"x": duty})
    assert a.run_due() == {"test-duty": 2}
    assert b.run_due() == {}  # the slot is taken: b waits for the next one
    assert a.run_due() == {}  # a's own timer has not passed
    assert calls == [1] and done == [[1, 2]]
    with Session(engine) as db:
        row = db.get(DutyState, "test-duty")
        assert row.runs == 1 and row.owner == "a" and row.last_found == 2
        assert row.next_due_at > utcnow() + timedelta(seconds=50)
        row.next_due_at = utcnow() - timedelta(seconds=1)  # the next slot has come
        db.add(row)
        db.commit()
    b.next_try.clear()
    assert b.run_due() == {"test-duty": 2} and calls == [1, 1]


def test_a_failing_duty_is_recorded_and_the_others_still_run(store):
    def broken(_engine):
        raise RuntimeError("target directory unreachable")

    runner = duties.DutyRunner(store, "x", duties={
        "a": duties.Duty("broken", 60, broken), "b": duties.Duty("fine", 60, lambda e: 0)})
    assert runner.run_due() == {"broken": 0, "fine": 0}
    with Session(store) as db:
        row = db.get(DutyState, "broken")
        assert row.last_error == "RuntimeError: target directory unreachable"
        assert db.get(DutyState, "fine").last_error is None


def test_interval_override_and_counts(monkeypatch):
    duty = duties.Duty("expired-password", 60, lambda e: None)
    monkeypatch.setenv("PAMFLOW_DUTY_EXPIRED_PASSWORD_SECONDS", "300")
    assert duty.every == 300
    monkeypatch.setenv("PAMFLOW_DUTY_EXPIRED_PASSWORD_SECONDS", "nonsense")
    assert duty.every == 60
    monkeypatch.setenv("PAMFLOW_DUTY_EXPIRED_PASSWORD_SECONDS", "0")
    assert duty.every == 60
    assert duties.found(None) == 0 and duties.found([1, 2]) == 2 and duties.found(3) == 3
    assert duties.found(duties.Reconciled(1, 2, [5, 6])) == 3


def test_the_executor_service_runs_the_expired_password_duty_on_the_real_sshd(store, sshd):
    dev, _ = make_device(store, sshd)
    pw = nasty("duty")
    cred = add_credential(store, dev, sshd.add_account(pw), pw,
                          expires_at=utcnow() - timedelta(minutes=1), change_interval_days=7)
    runner = duties.DutyRunner(store, "svc", duties={
        k: v for k, v in duties.load().items() if k != "prune-idle-runs"})
    summary = serve(4.0, 0.2, store, batch_size=10, workers=2, duties=runner.run_due)
    assert summary.duty_work >= 1 and summary.succeeded == 1, summary
    with Session(store) as db:
        [op] = db.exec(select(Operation).where(Operation.credential_id == cred.id)).all()
        assert op.kind == "change" and op.state == "succeeded"
        assert db.get(DutyState, "expired-password").last_found == 1
        assert db.get(DutyState, "password-reservation").runs == 1


def test_idle_runs_are_tagged_and_pruned_after_the_retention(prefect_server, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.housekeeping import IDLE_TAG, mark_nothing_to_do, prune_idle_runs

    @flow(name="idle-probe")
    def idle_probe(idle: bool) -> str:
        from prefect.context import FlowRunContext

        if idle:
            mark_nothing_to_do()
        ctx = FlowRunContext.get()
        assert ctx is not None and ctx.flow_run is not None
        return str(ctx.flow_run.id)

    idle_id, busy_id = idle_probe(True), idle_probe(False)
    with get_client(sync_client=True) as client:
        assert IDLE_TAG in client.read_flow_run(idle_id).tags
    prune_idle_runs()  # nothing of ours is older than the retention yet
    with get_client(sync_client=True) as client:
        client.read_flow_run(idle_id)
    monkeypatch.setenv("PAMFLOW_IDLE_RUN_RETENTION_HOURS", "0")
    assert prune_idle_runs(now=utcnow() + timedelta(days=2)) == []  # 0 = keep forever
    monkeypatch.setenv("PAMFLOW_IDLE_RUN_RETENTION_HOURS", "1")
    pruned = prune_idle_runs(now=utcnow() + timedelta(hours=2))
    with get_client(sync_client=True) as client:
        from prefect.exceptions import ObjectNotFound

        with pytest.raises(ObjectNotFound):
            client.read_flow_run(idle_id)
        assert client.read_flow_run(busy_id).id  # a run that did work stays
    assert pruned
