import pytest
import sqlalchemy as sa
from sqlmodel import select

from pamflow import audit, db, notifications
from pamflow.models import Device, Notification, Operation


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_migrated_schema_round_trip(backend, request):
    engine = request.getfixturevalue(backend)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"device", "credential", "operation", "notification", "audit_log",
            "alembic_version"} <= tables
    with db.session(engine) as s:
        s.add(Device(name="web1", address="10.0.0.1", ports=[22, 443]))
        s.commit()
        dev = s.exec(select(Device)).one()
        assert dev.ports == [22, 443] and dev.created_at.tzinfo is not None


def test_one_running_operation_per_credential(store):
    from pamflow.models import Credential
    with db.session(store) as s:
        d = Device(name="d", address="h")
        s.add(d)
        s.flush()
        c = Credential(device_id=d.id, username="root")
        s.add(c)
        s.flush()
        s.add(Operation(kind="change", credential_id=c.id, state="running"))
        s.commit()
        s.add(Operation(kind="verify", credential_id=c.id, state="running"))
        with pytest.raises(sa.exc.IntegrityError):
            s.commit()


def test_audit_chain_detects_tampering(store):
    with db.session(store) as s:
        for i in range(3):
            audit.record(s, "tester", "device.created", "device", i, {"n": i})
        s.commit()
        assert audit.verify_chain(s) is None
        s.execute(sa.text("UPDATE audit_log SET detail = '{\"n\": 9}' WHERE id = 2"))
        s.commit()
        assert audit.verify_chain(s) == 2


def test_notification_refuses_secret_context(store):
    with db.session(store) as s:
        notifications.queue(s, "Lost of connectivity", "x", "y", {"device": "d"})
        with pytest.raises(ValueError, match="secrets"):
            notifications.queue(s, "Lost of connectivity", "x", "y", {"password": "p"})
        with pytest.raises(KeyError):
            notifications.queue(s, "No such thing", "x", "y")
        s.commit()
        assert len(s.exec(select(Notification)).all()) == 1


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_audit_chain_holds_across_transactions_and_concurrent_writers(backend, request):
    import threading

    engine = request.getfixturevalue(backend)

    def writer(n: int) -> None:
        for i in range(10):
            with db.session(engine) as s:
                for j in range(3):
                    audit.record(s, f"w{n}", "x", "device", i, {"j": j})
                s.commit()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.session(engine) as s:
        assert audit.verify_chain(s) is None
        assert len(s.exec(select(audit.AuditLog)).all()) == 120
