"""User eligibility check and user notification before lock: inactive local users locked
(directory users left alone), temporary users expired, temporary locks lifted, users told
before the lock once per episode; each change audited; robots run for real."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from pamflow.models import AuditLog, Notification, SystemParameter, User, utcnow
from pamflow.users import (
    LifecycleSettings,
    UserLifecycleError,
    check_eligibility,
    notify_before_lock,
    settings_from_parameters,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request):
    return request.getfixturevalue("store" if request.param == "sqlite" else "pg_store")


def _users(engine, now):
    d = timedelta(days=1)
    people = {
        "fresh": User(username="fresh", email="f@x", last_login_at=now - 3 * d),
        "idle": User(username="idle", email="i@x", last_login_at=now - 100 * d),
        "never": User(username="never", email="n@x", created_at=now - 95 * d),
        "soon": User(username="soon", email="s@x", last_login_at=now - 85 * d),
        "soon_nomail": User(username="soon_nomail", last_login_at=now - 86 * d),
        "ldap_idle": User(username="ldap_idle", source="ldap", last_login_at=now - 300 * d),
        "temp_over": User(username="temp_over", email="t@x", temporary_until=now - d,
                          last_login_at=now - d),
        "temp_soon": User(username="temp_soon", email="ts@x", temporary_until=now + 3 * d,
                          last_login_at=now - d),
        "lock_over": User(username="lock_over", status="locked", locked_until=now - d,
                          last_login_at=now - 2 * d),
        "lock_on": User(username="lock_on", status="locked", locked_until=now + d,
                        last_login_at=now - 2 * d),
    }
    with Session(engine, expire_on_commit=False) as db:
        db.add_all(people.values())
        db.commit()
    return people


def _status(engine):
    with Session(engine) as db:
        return {u.username: u.status for u in db.exec(select(User))}


def test_eligibility_check_locks_expires_and_unlocks(any_store):
    engine = any_store
    now = utcnow()
    _users(engine, now)
    changes = check_eligibility(engine, LifecycleSettings(batch_size=2), now=now)
    assert {(c.username, c.change) for c in changes} == {
        ("idle", "locked"), ("never", "locked"), ("temp_over", "expired"),
        ("lock_over", "unlocked")}
    assert _status(engine) == {
        "fresh": "active", "idle": "locked", "never": "locked", "soon": "active",
        "soon_nomail": "active", "ldap_idle": "active", "temp_over": "expired",
        "temp_soon": "active", "lock_over": "active", "lock_on": "locked"}
    with Session(engine) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action.like("user.%"))).all()
    assert sorted(r.action for r in rows) == ["user.expired", "user.locked", "user.locked",
                                              "user.unlocked"]
    assert check_eligibility(engine, LifecycleSettings(), now=now) == []  # idempotent


def test_notification_before_lock_once_per_episode(any_store):
    engine = any_store
    now = utcnow()
    people = _users(engine, now)
    notices = notify_before_lock(engine, LifecycleSettings(notice_days=7), now=now)
    got = {(n.username, n.reason, n.notified) for n in notices}
    assert got == {("soon", "inactive", True), ("soon_nomail", "inactive", False),
                   ("temp_soon", "temporary", True), ("idle", "inactive", True),
                   ("never", "inactive", True)}
    with Session(engine) as db:
        queued = db.exec(select(Notification).where(
            Notification.type == "User notification before lock")).all()
    assert {tuple(n.recipients) for n in queued} == {("s@x",), ("ts@x",), ("i@x",), ("n@x",)}
    soon = next(n for n in queued if n.recipients == ["s@x"])
    lock_at = people["soon"].last_login_at + timedelta(days=90)
    assert lock_at.strftime("%Y-%m-%d") in soon.subject and "password" not in soon.context
    # once per episode: the next day nobody is told again
    again = notify_before_lock(engine, LifecycleSettings(), now=now + timedelta(days=1))
    assert {n.username for n in again if n.notified} == set()
    # a new login starts a new episode
    with Session(engine) as db:
        u = db.exec(select(User).where(User.username == "soon")).one()
        u.last_login_at = now + timedelta(hours=1)  # logged in after the notice
        db.add(u)
        db.commit()
    later = now + timedelta(days=84)
    assert "soon" in {n.username for n in notify_before_lock(engine, LifecycleSettings(),
                                                             now=later) if n.notified}


def test_settings_from_parameters_refuse_nonsense(store):
    with Session(store) as db:
        db.merge(SystemParameter(key="users.inactive_days", value="30"))
        db.merge(SystemParameter(key="users.lock_notice_days", value="5"))
        db.commit()
        assert settings_from_parameters(db) == LifecycleSettings(30, 5)
        db.merge(SystemParameter(key="users.lock_notice_days", value="45"))
        db.commit()
        with pytest.raises(UserLifecycleError, match="less than"):
            settings_from_parameters(db)
        db.merge(SystemParameter(key="users.inactive_days", value="'; DROP TABLE pam_user"))
        db.commit()
        with pytest.raises(UserLifecycleError, match="whole number"):
            settings_from_parameters(db)


def test_user_robots_run_for_real(store, prefect_server):
    from flows.users import user_eligibility_check, user_notification_before_lock

    _users(store, utcnow())
    notices = user_notification_before_lock()
    assert {n["username"] for n in notices if n["notified"]} >= {"soon", "temp_soon"}
    changes = user_eligibility_check()
    assert {c["username"] for c in changes} == {"idle", "never", "temp_over", "lock_over"}
