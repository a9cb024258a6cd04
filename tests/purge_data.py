"""Real rows for the purge, sealing and tenant tests: two tenants' devices, sessions with
events, operations, notifications, webhook deliveries and a hash-chained audit log, with
control dates spread over the last 200 days (bulk inserts, tens of thousands of rows)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from pamflow import audit
from pamflow.models import (
    Credential,
    Device,
    Notification,
    Operation,
    SessionEvent,
    WebhookDelivery,
    table_of,
    utcnow,
)
from pamflow.models import Session as ProxySession

TENANTS = ("acme", "globex")


def day(now: datetime, i: int, n: int) -> datetime:
    """Row ``i`` of ``n``: spread evenly from 200 days ago to now."""
    return now - timedelta(days=200) + timedelta(days=200) * (i / n)


def seed(engine, *, sessions: int = 2000, events_per: int = 4, operations: int = 4000,
         notifications: int = 3000, deliveries: int = 3000, audit_rows: int = 2000,
         now: datetime | None = None) -> dict[str, int]:
    now = now or utcnow()
    counts = {}
    with engine.begin() as conn:
        dev = table_of(Device)
        ids = {}
        for t in TENANTS:
            ids[t] = conn.execute(sa.insert(dev).values(
                name=f"{t}-srv", address=f"10.0.0.{len(ids) + 1}", platform="linux", ports=[22],
                tenant=t, source="manual", maintenance_mode=False, active=True,
                connectivity="unknown", settings={}, created_at=now, updated_at=now)
            ).inserted_primary_key[0]
        cred = conn.execute(sa.insert(table_of(Credential)).values(
            device_id=ids["acme"], username="root", kind="local", secret_version=0,
            status="ok", policy="default", auto_change=True, created_at=now, updated_at=now)
        ).inserted_primary_key[0]
        s_rows = []
        for i in range(sessions):
            t = TENANTS[i % 2]
            at = day(now, i, sessions)
            s_rows.append(dict(device_id=ids[t], protocol="ssh",
                               status="active" if i % 50 == 0 else "finished",
                               started_at=at, ended_at=at + timedelta(minutes=5),
                               last_activity_at=at, risk_score=0))
        conn.execute(sa.insert(table_of(ProxySession)), s_rows)
        sids = [r[0] for r in conn.execute(sa.text("SELECT id FROM session ORDER BY id"))]
        conn.execute(sa.insert(table_of(SessionEvent)), [
            dict(session_id=sid, at=now, kind="input", data=f"ls {k}")
            for sid in sids for k in range(events_per)])
        conn.execute(sa.insert(table_of(Operation)), [
            dict(kind="verify", state=("succeeded", "failed", "queued")[i % 3], priority=100,
                 credential_id=cred if i == 2 else None, device_id=ids[TENANTS[i % 2]],
                 not_before=day(now, i, operations), attempts=1, max_attempts=5,
                 retryable=False, lease_epoch=0, requested_by="t", parameters={}, result={},
                 created_at=day(now, i, operations),
                 finished_at=None if i % 3 == 2 else day(now, i, operations))
            for i in range(operations)])
        conn.execute(sa.insert(table_of(Notification)), [
            dict(type="Audit trail", family="Audit Trail", subject="s", body="b",
                 recipients=[], context={}, state="sent" if i % 4 else "queued", attempts=0,
                 created_at=day(now, i, notifications)) for i in range(notifications)])
        conn.execute(sa.insert(table_of(WebhookDelivery)), [
            dict(event_id=f"e-{i}", source="src", delivery_id=f"d-{i}", event="pam.x",
                 payload={}, received_at=day(now, i, deliveries), attempts=1, failures=0,
                 delivered_at=day(now, i, deliveries) if i % 5 else None)
            for i in range(deliveries)])
    counts.update(sessions=sessions, events=sessions * events_per, operations=operations,
                  notifications=notifications, deliveries=deliveries)
    write_audit(engine, audit_rows, now - timedelta(days=200), now)
    counts["audit"] = audit_rows
    return counts


def write_audit(engine, n: int, start: datetime, end: datetime) -> None:
    """``n`` chained audit rows with times spread from ``start`` to ``end``."""
    import pamflow.audit as mod

    step = (end - start) / max(n, 1)
    clock = {"t": start}

    def fake_now() -> datetime:
        clock["t"] += step
        return clock["t"]

    original = mod.utcnow
    mod.utcnow = fake_now
    try:
        with Session(engine) as db:
            for i in range(n):
                audit.record(db, "test", "thing.done", "thing", i, {"i": i})
                if i % 5000 == 4999:
                    db.commit()
            db.commit()
    finally:
        mod.utcnow = original


def count(engine, table: str, where: str = "1=1") -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one()
