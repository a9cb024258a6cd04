"""End to end: signed webhooks start the batch import robot on a real Prefect server and a
real process worker; refused calls start nothing; calls accepted while Prefect is down
start exactly one run each once it is back.

The test starts its own Prefect server (it stops and restarts it), deploys every robot
from prefect.yaml (pausing all but the batch import so scheduled robots stay out of the
way), runs ``pamflow webhooks serve`` as a subprocess, and shares one store (SQLite file,
master key, data dir) between the gateway, the worker's flow runs and the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from pamflow import platform
from pamflow.models import Device, WebhookDelivery
from pamflow.webhooks import signed_headers

ROBOT = "batch-import-processing"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Platform:
    """A Prefect server (restartable on the same port and database), a worker, the gateway."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = platform.free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.home = tmp / "prefect-server"
        store_home = tmp / "pamflow"
        store_home.mkdir()
        self.db_url = f"sqlite:///{store_home / 'pamflow.db'}"
        self.uploads = tmp / "uploads"  # the workers read spreadsheets from here only
        self.uploads.mkdir()
        self.env = {
            "PAMFLOW_UPLOAD_DIR": str(self.uploads),
            "PAMFLOW_HOME": str(store_home),
            "PAMFLOW_DATABASE_URL": self.db_url,
            "PAMFLOW_MASTER_KEY": os.environ["PAMFLOW_MASTER_KEY"],
            "PAMFLOW_ROOT": str(platform.REPO_ROOT),
        }
        self.server = self.worker = self.gateway = None
        self.gateway_url = ""

    def start_server(self) -> None:
        self.server = platform.start_server(self.home, self.port, log_path=self.tmp / "server.log")
        platform.wait_healthy(self.api, proc=self.server)

    def stop_server(self) -> None:
        platform.stop(self.server, deadline=20)
        self.server = None

    def start_worker(self) -> None:
        self.worker = platform.start_worker(self.api, log_path=self.tmp / "worker.log",
                                            query_seconds=1, **self.env)

    def stop_worker(self) -> None:
        platform.stop(self.worker, deadline=20)
        self.worker = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pamflow.cli", *args], capture_output=True,
                              text=True, check=True, env=platform.prefect_env(self.api, **self.env))

    def start_gateway(self) -> None:
        port = platform.free_port()
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "pamflow.cli", "webhooks", "serve", "--port", str(port)],
            env=platform.prefect_env(self.api, **self.env), start_new_session=True,
            stdout=open(self.tmp / "gateway.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        wait_for(self._gateway_up, 30, "the gateway")

    def _gateway_up(self) -> bool:
        if self.gateway.poll() is not None:
            raise AssertionError(f"gateway exited: {(self.tmp / 'gateway.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.gateway_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(f"{self.gateway_url}/health", timeout=10).json()

    def stop(self) -> None:
        for proc in (self.gateway, self.worker, self.server):
            platform.stop(proc, deadline=20)

    # ---- Prefect API ---------------------------------------------------------------
    def api_post(self, path: str, body: dict) -> list | dict:
        resp = httpx.post(f"{self.api}{path}", json=body, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def deployments(self) -> list[dict]:
        return self.api_post("/deployments/filter", {})

    def robot_runs(self, deployment_id: str) -> list[dict]:
        return self.api_post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}},
                                                   "sort": "EXPECTED_START_TIME_ASC"})

    def pam_events(self) -> list[dict]:
        """The pam.* events the gateway emitted (the robots' own pam.notification.queued,
        sent when a run queues a notification, are not calls of the webhook)."""
        query = {"filter": {"event": {"prefix": ["pam."]}}, "limit": 50}
        return [e for e in self.api_post("/events/filter", query)["events"]
                if not e["event"].startswith("pam.notification.")]


@pytest.fixture
def e2e(tmp_path):
    plat = Platform(tmp_path)
    try:
        yield plat
    finally:
        plat.stop()
        for log in ("gateway.log", "worker.log"):
            if (tmp_path / log).exists():
                print(f"---- {log} (tail)\n{(tmp_path / log).read_text()[-3000:]}")


def write_sheet(path: Path, prefix: str, count: int) -> Path:
    rows = ["address,name,platform,site"]
    rows += [f"{prefix}.{i},{prefix.replace('.', '-')}-host-{i},linux,e2e" for i in range(1, count + 1)]
    path.write_text("\n".join(rows) + "\n")
    return path


def devices(db_url: str, prefix: str) -> set[str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            t = Device.__table__
            return set(conn.execute(sa.select(t.c.address).where(t.c.address.like(f"{prefix}.%"))).scalars())
    finally:
        engine.dispose()


def outbox_rows(db_url: str) -> list[dict]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(WebhookDelivery.__table__))]
    finally:
        engine.dispose()


def test_webhooks_start_the_batch_import_end_to_end(e2e, tmp_path):
    e2e.start_server()
    platform.ensure_work_pool(e2e.api)
    platform.deploy_all(e2e.api, platform.REPO_ROOT)
    # the CI workflow's command (per robot: `deploy --all` ignores --version) sets the version
    version = "e2e-" + uuid.uuid4().hex[:8]
    res = platform.run_prefect(["--no-prompt", "deploy", "--name", ROBOT, "--version", version], e2e.api,
                               cwd=platform.REPO_ROOT, check=False, PAMFLOW_ROOT=str(platform.REPO_ROOT))
    assert res.returncode == 0, res.stdout + res.stderr
    deployments = {d["name"]: d for d in e2e.deployments()}
    assert deployments[ROBOT]["version"] == version
    robot_id = deployments[ROBOT]["id"]
    # keep the scheduled robots out of the way: pause them and drop their scheduled runs
    for name, dep in deployments.items():
        if name != ROBOT:
            httpx.patch(f"{e2e.api}/deployments/{dep['id']}", json={"paused": True}, timeout=30
                        ).raise_for_status()
    for run in e2e.api_post("/flow_runs/filter", {}):
        if run["deployment_id"] != robot_id:
            httpx.delete(f"{e2e.api}/flow_runs/{run['id']}", timeout=30)
    e2e.start_worker()

    secret = e2e.cli("webhooks", "add-source", "import").stdout.strip().splitlines()[-1]
    e2e.start_gateway()

    def send(body: bytes, headers: dict, source: str = "import") -> httpx.Response:
        return httpx.post(f"{e2e.gateway_url}/hooks/{source}", content=body, headers=headers, timeout=30)

    # ---- 1. a signed pam.import.uploaded starts the robot, which imports the sheet --------
    sheet = write_sheet(e2e.uploads / "first.csv", "10.71.0", 5)
    body = json.dumps({"path": str(sheet)}).encode()
    first_headers = signed_headers(secret, "uploaded", body)
    resp = send(body, first_headers)
    assert resp.status_code == 202, resp.text
    event_id = resp.json()["event_id"]

    run = wait_for(lambda: [r for r in e2e.robot_runs(robot_id) if r["state_type"] in TERMINAL],
                   180, "the batch import run to finish")[0]
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"] == {"path": str(sheet), "tenant": "default"}
    assert devices(e2e.db_url, "10.71.0") == {f"10.71.0.{i}" for i in range(1, 6)}
    events = e2e.pam_events()
    assert [e["id"] for e in events] == [event_id]
    assert secret not in json.dumps(events)

    # ---- 2. refused calls: each its answer, nothing written, nothing emitted, no run -----
    stale = signed_headers(secret, "uploaded", body, timestamp=int(time.time()) - 600)
    big = json.dumps({"path": str(sheet), "pad": "x" * 70_000}).encode()
    bad_json = b'{"path": '
    other = e2e.cli("webhooks", "add-source", "crm").stdout.strip().splitlines()[-1]
    refusals = [
        ("bad signature", send(body, signed_headers("whsec_" + "0" * 43, "uploaded", body)), 401),
        ("replay", send(body, first_headers), 409),
        ("stale timestamp", send(body, stale), 401),
        ("oversized body", send(big, signed_headers(secret, "uploaded", big)), 413),
        ("malformed JSON", send(bad_json, signed_headers(secret, "uploaded", bad_json)), 400),
        ("unknown source", send(body, signed_headers(secret, "uploaded", body), source="nosuch"), 401),
        ("source without that event", send(body, signed_headers(other, "uploaded", body), source="crm"), 422),
    ]
    for case, answer, status in refusals:
        assert answer.status_code == status, f"{case}: {answer.status_code} {answer.text}"
        assert "error" in answer.json()
    time.sleep(5)  # longer than the forwarder's sweep and the trigger's reaction
    assert len(outbox_rows(e2e.db_url)) == 1
    assert [e["id"] for e in e2e.pam_events()] == [event_id]
    assert len(e2e.robot_runs(robot_id)) == 1

    # ---- 3. Prefect down: three calls accepted; back up: exactly three runs ----------------
    e2e.stop_worker()
    e2e.stop_server()
    sheets = [write_sheet(e2e.uploads / f"outage-{n}.csv", f"10.72.{n}", 3) for n in range(3)]
    accepted = []
    for path in sheets:
        body = json.dumps({"path": str(path)}).encode()
        resp = send(body, signed_headers(secret, "uploaded", body))
        assert resp.status_code == 202, resp.text
        accepted.append(resp.json()["event_id"])
    wait_for(lambda: e2e.health()["prefect_error"], 30, "a failed forward while Prefect is down")
    assert e2e.health()["outbox_pending"] == 3

    e2e.start_server()  # same port, same database
    e2e.start_worker()
    wait_for(lambda: e2e.health()["outbox_pending"] == 0, 60, "the outbox to drain")
    finished = wait_for(
        lambda: (runs := e2e.robot_runs(robot_id)) and len(runs) >= 4
        and all(r["state_type"] in TERMINAL for r in runs) and runs, 240, "three more runs to finish")
    time.sleep(5)  # a duplicate would show up by now
    runs = e2e.robot_runs(robot_id)
    assert len(runs) == 4, [r["parameters"] for r in runs]
    assert sorted(r["parameters"]["path"] for r in runs if r["id"] != run["id"]) == sorted(
        str(p) for p in sheets)  # one run per call accepted during the outage
    assert all(r["state_type"] == "COMPLETED" for r in finished), [r["state"] for r in finished]
    for n in range(3):
        assert devices(e2e.db_url, f"10.72.{n}") == {f"10.72.{n}.{i}" for i in range(1, 4)}
    rows = outbox_rows(e2e.db_url)
    assert len(rows) == 4 and all(r["delivered_at"] for r in rows)
    assert sorted(e["id"] for e in e2e.pam_events()) == sorted([event_id, *accepted])
