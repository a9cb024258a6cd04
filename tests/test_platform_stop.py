"""`pamflow up` stopped with SIGTERM stops its flow runs too, as Ctrl-C does: a running
operation-executor instance ends gracefully (Completed), and no process is left behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pamflow import platform

ROOT = Path(__file__).resolve().parent.parent


def _processes_with_home(home: Path) -> list[tuple[int, str]]:
    """Processes whose environment names this PAMFLOW_HOME (what `up` started)."""
    marker = f"PAMFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append((int(entry.name), cmd))
        except OSError:
            continue
    return found


def _flow_run_states(prefect_db: Path, flow: str) -> list[str]:
    with sqlite3.connect(prefect_db) as conn:
        return [row[0] for row in conn.execute(
            "SELECT fr.state_type FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
            "WHERE f.name = ?", (flow,))]


def test_sigterm_stops_up_and_its_running_flow_runs(tmp_path):
    port, gw_port = platform.free_port(), platform.free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PAMFLOW_DATABASE_URL", "PREFECT_HOME",
                        "PAMFLOW_MASTER_KEY")}
    env.update(PAMFLOW_HOME=str(home), PREFECT_HOME=str(tmp_path / "client"))
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pamflow.cli", "up", "--port", str(port),
         "--gateway-port", str(gw_port)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 240
        while "pamflow is up" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        assert "pamflow is up" in log.read_text(), log.read_text()[-3000:]
        # start an executor instance now (its cron would start one within 5 minutes)
        auth = (home / platform.AUTH_FILE).read_text().strip()
        run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                              "operation-executor/operation-executor"],
                             env={**env, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth},
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if "RUNNING" in _flow_run_states(home / "prefect" / "prefect.db", "operation-executor"):
                break
            time.sleep(1)
        assert "RUNNING" in _flow_run_states(home / "prefect" / "prefect.db", "operation-executor")
        # and inside its service loop (the flow's set-up is Prefect's, not ours)
        deadline = time.monotonic() + 120
        while "serving: polling the queue" not in (home / "worker.log").read_text() \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "serving: polling the queue" in (home / "worker.log").read_text()
        running_before = _processes_with_home(home)
        assert any("prefect.engine" in cmd or "_workspace_supervisor" in cmd
                   for _pid, cmd in running_before), running_before
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert "Stopping pamflow" in log.read_text()
    left = []
    for _ in range(20):  # processes just killed may take a moment to be reaped
        left = _processes_with_home(home)
        if not left:
            break
        time.sleep(0.5)
    assert left == [], left
    # the executor instances (the one `up` keeps alive and the one started above) ended by
    # their own stop handling, not killed mid-run
    states = _flow_run_states(home / "prefect" / "prefect.db", "operation-executor")
    assert {s for s in states if s != "SCHEDULED"} == {"COMPLETED"}, states
