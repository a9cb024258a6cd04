"""After downtime the embedded platform catches up without a lock storm (issue 15): its
schedules are made to fall behind (the scheduled runs moved hours into the past while it is
stopped), it is started again: the worker stays up, the Prefect server logs no ERROR line,
and each scheduled robot runs once, not once per missed slot."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pamflow import platform
from tests.test_platform_supervision import start_up, stop_up, up_env

SHIFT = timedelta(hours=6)


def _parse(value: str) -> datetime:
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _shifted(value: str) -> str:
    """``value`` (as Prefect stored it) moved SHIFT into the past, in the same format."""
    when = _parse(value) - SHIFT
    if "T" in value:
        return when.isoformat()
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") \
        + ("+00:00" if value.endswith("+00:00") else "")


def _scheduled(db: Path) -> list[tuple]:
    with sqlite3.connect(db, timeout=60) as conn:
        return list(conn.execute(
            "SELECT id, deployment_id, expected_start_time FROM flow_run "
            "WHERE state_type = 'SCHEDULED' AND auto_scheduled = 1"))


def _fall_behind(db: Path) -> None:
    """Move every auto-scheduled run (and its Scheduled state) SHIFT into the past."""
    with sqlite3.connect(db, timeout=60) as conn:
        runs = list(conn.execute(
            "SELECT id, expected_start_time, next_scheduled_start_time, state_timestamp, "
            "state_id FROM flow_run WHERE state_type = 'SCHEDULED' AND auto_scheduled = 1"))
        for run_id, expected, nxt, stamp, state_id in runs:
            conn.execute("UPDATE flow_run SET expected_start_time = ?, "
                         "next_scheduled_start_time = ?, state_timestamp = ? WHERE id = ?",
                         (_shifted(expected), _shifted(nxt) if nxt else None,
                          _shifted(stamp) if stamp else None, run_id))
            row = conn.execute("SELECT timestamp, state_details FROM flow_run_state WHERE id = ?",
                               (state_id,)).fetchone()
            if row is None:
                continue
            details = json.loads(row[1]) if row[1] else {}
            if details.get("scheduled_time"):
                details["scheduled_time"] = _shifted(details["scheduled_time"])
            conn.execute("UPDATE flow_run_state SET timestamp = ?, state_details = ? WHERE id = ?",
                         (_shifted(row[0]), json.dumps(details), state_id))
        conn.commit()


def _runs_since(db: Path, before: datetime) -> dict[str, list[tuple[str, str]]]:
    """Per deployment: (id, state_type) of its runs expected before ``before``."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with sqlite3.connect(db, timeout=60) as conn:
        for run_id, dep, expected, state in conn.execute(
                "SELECT id, deployment_id, expected_start_time, state_type FROM flow_run "
                "WHERE deployment_id IS NOT NULL AND auto_scheduled = 1"):
            if expected and _parse(expected) < before:
                out[dep].append((run_id, state))
    return out


def test_after_downtime_each_robot_runs_once_without_lock_errors(tmp_path):
    env = up_env(tmp_path)
    home = tmp_path / "home"
    db = home / "prefect" / "prefect.db"
    proc, _log, _api, _gw = start_up(tmp_path, env, "up-1.log")
    try:
        deadline = time.monotonic() + 240
        while len({d for _i, d, _e in _scheduled(db)}) < 2 and time.monotonic() < deadline:
            time.sleep(2)  # the scheduler plans each scheduled robot's next runs
    finally:
        stop_up(proc, home)
    planned = _scheduled(db)
    assert len({d for _i, d, _e in planned}) >= 2, planned

    _fall_behind(db)
    restart = datetime.now(UTC)
    behind = _runs_since(db, restart)
    missed = {dep: [r for r, s in runs if s == "SCHEDULED"] for dep, runs in behind.items()}
    assert any(len(runs) > 1 for runs in missed.values()), missed  # several slots missed

    proc, log, _api, _gw = start_up(tmp_path, env, "up-2.log")
    try:
        out = log.read_text()
        dropped = sum(len(runs) - 1 for runs in missed.values() if runs)
        assert f"skipped {dropped} scheduled run(s) missed" in out, out[-2000:]

        def each_ran_once():
            now = _runs_since(db, restart)
            ran = {dep: [s for _r, s in now.get(dep, []) if s != "SCHEDULED"] for dep in missed}
            left = {dep: [s for _r, s in now.get(dep, []) if s == "SCHEDULED"] for dep in missed}
            return all(len(ran[d]) == 1 and not left[d] for d in missed if missed[d]) and ran

        deadline = time.monotonic() + 300
        ran = None
        while time.monotonic() < deadline and not ran:
            ran = each_ran_once()
            time.sleep(3)
        assert ran, _runs_since(db, restart)
        time.sleep(30)  # and nothing more comes of the missed slots
        assert each_ran_once(), _runs_since(db, restart)
        state = json.loads((home / platform.STATE_FILE).read_text())
        worker = next(p for p in state["processes"] if p["name"] == "worker")
        assert worker["state"] == "running" and worker["restarts"] == 0, state
    finally:
        stop_up(proc, home)
    server_log = (home / "prefect" / "server.log").read_text(errors="replace")
    errors = [line for line in server_log.splitlines() if "| ERROR" in line
              or "database is locked" in line]
    assert errors == [], errors[:5]
