"""`pamflow up` supervises what it starts (issue 15): the worker and the gateway killed with
SIGKILL come back on their own, the restarts are logged and shown by `pamflow status`, an
operation queued and a webhook call made meanwhile are done, and stopping leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlmodel import Session, select

from pamflow import platform
from pamflow.models import Device, Operation
from pamflow.operations import queue
from pamflow.webhooks import signed_headers
from tests.test_platform_stop import _processes_with_home
from tests.test_rotation import add_credential, make_device, nasty

ROOT = Path(__file__).resolve().parent.parent


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pamflow.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _state(home: Path) -> dict:
    return json.loads((home / platform.STATE_FILE).read_text())


def _proc(home: Path, name: str) -> dict:
    return next(p for p in _state(home)["processes"] if p["name"] == name)


def start_up(tmp_path: Path, env: dict, log_name: str = "up.log", port: int | None = None
             ) -> tuple[subprocess.Popen, Path, str, int]:
    """`pamflow up` with ``env``; returns (process, its log, API URL, gateway port)."""
    port, gw_port = port or platform.free_port(), platform.free_port()
    log = tmp_path / log_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "pamflow.cli", "up", "--port", str(port),
         "--gateway-port", str(gw_port)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 480  # a loaded machine can take minutes to start Prefect
    try:
        while "pamflow is up" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        assert "pamflow is up" in log.read_text(), log.read_text()[-3000:]
    except BaseException:
        stop_up(proc, Path(env["PAMFLOW_HOME"]))  # nothing left behind when it never came up
        raise
    return proc, log, f"http://127.0.0.1:{port}/api", gw_port


def stop_up(proc: subprocess.Popen, home: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    left = []
    for _ in range(20):  # processes just killed may take a moment to be reaped
        left = _processes_with_home(home)
        if not left:
            break
        time.sleep(0.5)
    assert left == [], left


def up_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_API_AUTH_STRING",
                        "PREFECT_API_KEY", "PAMFLOW_EMIT_EVENTS")}
    env.update(PAMFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "client"))
    return env


def test_killed_worker_and_gateway_come_back_and_their_work_is_done(tmp_path, store, sshd,
                                                                      monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")  # this process queues without an API
    dev, _accounts = make_device(store, sshd)
    pw = nasty("supervised")
    cred = add_credential(store, dev, sshd.add_account(pw), pw)
    env = up_env(tmp_path)  # the platform shares this test's store and master key
    home = tmp_path / "home"
    proc, log, api, gw_port = start_up(tmp_path, env)
    try:
        cli_env = {**env, "PREFECT_API_URL": api}
        added = _cli("webhooks", "add-source", "import", env=cli_env)
        assert added.returncode == 0, added.stdout + added.stderr
        secret = added.stdout.strip().splitlines()[-1]
        uploads = home / "uploads"
        uploads.mkdir(exist_ok=True, mode=0o700)
        (uploads / "sup.csv").write_text("name,address,platform,ports,username,password,kind\n"
                                         "sup-1,10.61.0.1,linux,22,root,Import-Secret-9,local\n")

        worker, gateway = _proc(home, "worker"), _proc(home, "webhook gateway")
        assert worker["state"] == gateway["state"] == "running"
        os.kill(worker["pid"], signal.SIGKILL)
        os.kill(gateway["pid"], signal.SIGKILL)
        killed = time.monotonic()

        # meanwhile: an operation is queued, a webhook call is made (retried until accepted)
        op_id = queue.enqueue(store, "verify", cred.id, requested_by="test").id
        body = json.dumps({"path": "sup.csv"}).encode()

        def accepted():
            try:
                resp = httpx.post(f"http://127.0.0.1:{gw_port}/hooks/import", content=body,
                                  headers=signed_headers(secret, "uploaded", body), timeout=10)
            except httpx.TransportError:
                return None
            return resp if resp.status_code == 202 else None

        _wait(accepted, 60, "the gateway accepting the webhook again")
        accepted_after = time.monotonic() - killed

        def both_back():
            w, g = _proc(home, "worker"), _proc(home, "webhook gateway")
            return (w["state"] == g["state"] == "running" and w["restarts"] == 1
                    and g["restarts"] == 1 and w["pid"] != worker["pid"]
                    and g["pid"] != gateway["pid"])

        _wait(both_back, 60, "the worker and the gateway restarted")
        back_after = time.monotonic() - killed
        out = log.read_text()
        assert f"worker exited with code {-signal.SIGKILL}; restarting in 1s" in out, out[-2000:]
        assert "webhook gateway restarted (pid" in out and "worker restarted (pid" in out
        print(f"worker and gateway restarted {back_after:.1f}s after SIGKILL; the gateway "
              f"accepted the webhook {accepted_after:.1f}s after it")

        status = _cli("status", env={**cli_env, "PAMFLOW_GATEWAY_URL": f"http://127.0.0.1:{gw_port}"})
        assert "supervisor `pamflow up` running" in status.stdout, status.stdout
        worker_line = next(line for line in status.stdout.splitlines()
                           if line.strip().startswith("worker "))
        assert "1 restart(s)" in worker_line and f"last exit code {-signal.SIGKILL}" in worker_line
        assert "operation-executor" in status.stdout  # the service robot the keeper keeps alive

        def op_done():
            with Session(store) as db:
                op = db.get(Operation, op_id)
                return op is not None and op.state == "succeeded"

        _wait(op_done, 240, "the queued operation done by the executor service")

        def imported():
            with Session(store) as db:
                return db.exec(select(Device).where(Device.name == "sup-1")).first()

        _wait(imported, 300, "the webhook's import done by the restarted worker")
    finally:
        stop_up(proc, home)
    assert not (home / platform.STATE_FILE).exists()
