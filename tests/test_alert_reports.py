"""Password change report and Expiration notification: what they count and list, one
notification per tenant and period (never twice), on SQLite and PostgreSQL; the flows on
the real Prefect server publish their tables."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from sqlmodel import Session, select

from pamflow import audit
from pamflow.alerts.reports import day_bounds, expiration_notification, password_change_report
from pamflow.models import Certificate, Credential, Device, Notification, Operation, utcnow

DAY = date(2026, 11, 28)


def seed(engine) -> None:
    start, _ = day_bounds(DAY)
    at = start + timedelta(hours=10)
    with Session(engine) as db:
        web = Device(name="web", address="10.9.0.1")
        acme = Device(name="acme-db", address="10.9.0.2", tenant="acme")
        db.add_all([web, acme])
        db.flush()
        root = Credential(device_id=web.id, username="root")
        app = Credential(device_id=web.id, username="app")
        dba = Credential(device_id=acme.id, username="dba")
        db.add_all([root, app, dba])
        db.flush()
        db.add_all([
            Operation(kind="change", state="succeeded", credential_id=root.id, finished_at=at),
            Operation(kind="change", state="failed", credential_id=app.id, finished_at=at,
                      error="web: app: authentication failed at step apply"),
            Operation(kind="activate", state="succeeded", credential_id=app.id, finished_at=at),
            Operation(kind="verify", state="failed", credential_id=app.id, finished_at=at),
            Operation(kind="change", state="succeeded", credential_id=dba.id, finished_at=at),
            # the day before and the day after: not in the report
            Operation(kind="change", state="failed", credential_id=dba.id,
                      finished_at=start - timedelta(seconds=1)),
            Operation(kind="change", state="succeeded", credential_id=dba.id,
                      finished_at=start + timedelta(days=1)),
            Operation(kind="change", state="queued", credential_id=root.id),
        ])
        db.commit()


def notes(engine, type_name) -> list[Notification]:
    with Session(engine) as db:
        return list(db.exec(select(Notification).where(Notification.type == type_name)))


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_password_change_report_counts_the_day_per_tenant_once(backend, request):
    engine = request.getfixturevalue(backend)
    seed(engine)
    report = password_change_report(engine, DAY)
    rows = {t.tenant: t for t in report.tenants}
    assert (rows["default"].changed, rows["default"].change_failed, rows["default"].activated,
            rows["default"].activation_failed) == (1, 1, 1, 0)
    assert (rows["acme"].changed, rows["acme"].change_failed) == (1, 0)
    assert all(t.notified for t in report.tenants)
    assert [(f.account, f.device) for f in report.failures] == [("app", "web")]
    sent = {n.context["tenant"]: n for n in notes(engine, "Password daily summary")}
    assert set(sent) == {"default", "acme"}
    assert "1 changed, 1 failed" in sent["default"].subject
    assert "app on web" in sent["default"].body and "authentication failed" in sent["default"].body
    again = password_change_report(engine, DAY)
    assert not any(t.notified for t in again.tenants)
    assert len(notes(engine, "Password daily summary")) == 2
    with Session(engine) as db:
        assert len(audit.entries(db, action="report.queued")) == 2
    assert password_change_report(engine, DAY, tenant="nobody").tenants == []


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_expiration_notification_lists_passwords_and_certificates_once(backend, request):
    engine = request.getfixturevalue(backend)
    now = utcnow()
    with Session(engine) as db:
        web = Device(name="web", address="10.9.0.1")
        off = Device(name="off", address="10.9.0.3", active=False)
        db.add_all([web, off])
        db.flush()
        db.add_all([
            Credential(device_id=web.id, username="soon", expires_at=now + timedelta(days=3)),
            Credential(device_id=web.id, username="later", expires_at=now + timedelta(days=30)),
            Credential(device_id=web.id, username="expired", expires_at=now - timedelta(days=1)),
            Credential(device_id=web.id, username="interval", change_interval_days=30,
                       last_changed_at=now - timedelta(days=25)),
            Credential(device_id=off.id, username="inactive", expires_at=now + timedelta(days=1)),
            Certificate(common_name="cert-soon", not_after=now + timedelta(days=20)),
            Certificate(common_name="cert-far", not_after=now + timedelta(days=200)),
        ])
        db.commit()
    report = expiration_notification(engine, now)
    assert sorted((i.kind, i.name) for i in report.items) == [
        ("certificate", "cert-soon"), ("password", "interval@web"), ("password", "soon@web")]
    assert report.notified == ["default"]
    note = notes(engine, "Expiration notification")
    assert len(note) == 1 and "2 password(s), 1 certificate(s)" in note[0].subject
    assert "soon@web" in note[0].body and "cert-soon" in note[0].body
    assert expiration_notification(engine, now).notified == []
    assert len(notes(engine, "Expiration notification")) == 1
    wider = expiration_notification(engine, now + timedelta(days=1), password_days=40)
    assert "later@web" in {i.name for i in wider.items}


def test_the_report_flows_publish_their_tables(store, prefect_server, prefect_client_sync):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.alerts import expiration_notification as expiration_flow
    from flows.alerts import password_change_report as report_flow

    seed(store)
    state = report_flow(day=DAY, return_state=True)
    assert state.result() == {"day": "2026-11-28", "tenants": 2, "notified": 2, "failures": 1}
    artifacts = prefect_client_sync.read_artifacts(flow_run_filter=FlowRunFilter(
        id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    tables = {a.key: a.data for a in artifacts if a.type == "table"}
    summary = tables["password-change-report"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert sorted(r["tenant"] for r in summary) == ["acme", "default"]
    assert "password-change-failures" in tables
    assert expiration_flow()["notified"] == 0  # nothing close to expiry in this store
