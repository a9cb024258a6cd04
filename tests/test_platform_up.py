"""The README's first command: `pamflow up` starts everything behind Prefect API
authentication, lists robots, has a worker online, forwards webhooks, stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from pamflow import platform
from pamflow.webhooks import signed_headers

ROOT = Path(__file__).resolve().parent.parent


def _deployment_names() -> set[str]:
    return {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cmdlines() -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:
                pass
    return found


def _cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pamflow.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_up_runs_the_platform_behind_api_auth_and_stops_on_ctrl_c(tmp_path):
    port, gw_port = platform.free_port(), platform.free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PAMFLOW_DATABASE_URL", "PREFECT_HOME",
                        "PAMFLOW_MASTER_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")}
    env.update(PAMFLOW_HOME=str(home), PREFECT_HOME=str(tmp_path / "client"))
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pamflow.cli", "up", "--port", str(port),
         "--gateway-port", str(gw_port)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 240
        while "pamflow is up" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        out = log.read_text()
        assert "pamflow is up" in out, out[-3000:]
        assert f"http://127.0.0.1:{port}" in out
        # the Prefect server keeps its database in pamflow's data directory
        assert (home / "prefect" / "prefect.db").exists()
        # the store and the master key (0600) were created
        assert (home / "pamflow.db").exists()
        assert oct((home / "master.key").stat().st_mode & 0o777) == "0o600"

        # ---- Prefect's API demands the generated auth string, kept 0600 outside Prefect ----
        auth_file = home / platform.AUTH_FILE
        assert oct(auth_file.stat().st_mode & 0o777) == "0o600"
        auth = auth_file.read_text().strip()
        assert len(auth) >= 40
        authed = platform.auth_headers(auth)
        for method, path, body in [("POST", "/deployments/filter", {}),
                                   ("POST", "/flow_runs/filter", {}),
                                   ("POST", "/block_documents/filter", {}),
                                   ("POST", "/events", []),
                                   ("GET", "/flow_runs/" + str(uuid.uuid4()), None)]:
            refused = httpx.request(method, api + path, json=body, timeout=30)
            assert refused.status_code == 401, (path, refused.status_code)
            wrong = httpx.request(method, api + path, json=body, timeout=30,
                                  headers=platform.auth_headers("pamflow:guess"))
            assert wrong.status_code == 401, (path, wrong.status_code)
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30, headers=authed)
        assert deployments.status_code == 200
        assert {d["name"] for d in deployments.json()} == _deployment_names()
        # every robot carries the checkout's commit as its version
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        if head:
            assert {d["version"] for d in deployments.json()} == {head}

        # ---- a worker is online in the process pool (read from the API) --------------------
        def online_workers():
            resp = httpx.post(f"{api}/work_pools/process/workers/filter", json={}, timeout=30,
                              headers=authed)
            assert resp.status_code == 200, resp.text
            return [w for w in resp.json() if w["status"] == "ONLINE"]

        workers = _wait(online_workers, 90, "a worker online in the process pool")
        assert len(workers) >= 1 and workers[0]["work_pool_id"]

        # ---- the CLI reads the auth file itself (no credentials in its environment) --------
        cli_env = {**env, "PREFECT_API_URL": api}
        res = _cli("robots", env=cli_env)
        assert res.returncode == 0, res.stdout + res.stderr
        for name in _deployment_names():
            assert name in res.stdout, (name, res.stdout)
        res = _cli("robots", "--json", env=cli_env)
        panel = {row["name"]: row for row in json.loads(res.stdout)}
        assert set(panel) == _deployment_names()
        assert panel["connectivity-test"]["schedule"].startswith("cron ")
        assert panel["connectivity-test"]["status"] == "active"
        assert panel["batch-import-processing"]["triggers"] == "pam.import.uploaded"
        assert panel["connectivity-test"]["next_run"] is not None

        status = _cli("status", env={**cli_env, "PAMFLOW_GATEWAY_URL": f"http://127.0.0.1:{gw_port}"})
        assert status.returncode == 0, status.stdout + status.stderr
        assert re.search(r"prefect .* healthy", status.stdout)
        assert "api auth   on" in status.stdout
        assert re.search(r"[1-9]\d* worker\(s\) online", status.stdout), status.stdout
        assert re.search(r"gateway .* healthy", status.stdout), status.stdout

        # `pamflow import --robot` runs the import robot's deployment on the worker
        sheet = tmp_path / "devices.csv"
        sheet.write_text("name,address,platform,ports,username,password,kind\n"
                         "h1,10.60.0.1,linux,22,root,Import-Secret-1,local\n")
        imported = _cli("import", "--robot", "--copy", "--strict", str(sheet), env=cli_env,
                        timeout=300)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        shown = _cli("devices", "show", "10.60.0.1", env=cli_env)
        assert shown.returncode == 0 and "h1" in shown.stdout, shown.stdout + shown.stderr
        runs = httpx.post(f"{api}/flow_runs/filter", timeout=30, headers=authed,
                          json={"flows": {"name": {"any_": ["batch-import-processing"]}}}).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"]

        # ---- the gateway forwards an accepted webhook into Prefect's events, auth on -------
        added = _cli("webhooks", "add-source", "import", env=cli_env)
        assert added.returncode == 0, added.stdout + added.stderr
        secret = added.stdout.strip().splitlines()[-1]
        body = json.dumps({"path": str(tmp_path / "no-such-sheet.csv")}).encode()
        accepted = httpx.post(f"http://127.0.0.1:{gw_port}/hooks/import", content=body,
                              headers=signed_headers(secret, "uploaded", body), timeout=30)
        assert accepted.status_code == 202, accepted.text
        event_id = accepted.json()["event_id"]

        def in_prefect():
            try:  # a busy embedded server may be slow to answer: ask again
                resp = httpx.post(f"{api}/events/filter", timeout=30, headers=authed,
                                  json={"filter": {"event": {"prefix": ["pam.import."]}},
                                        "limit": 50})
            except httpx.TimeoutException:
                return None
            assert resp.status_code == 200, resp.text
            return [e for e in resp.json()["events"] if e["id"] == event_id]

        [event] = _wait(in_prefect, 180, "the webhook's event in Prefect")
        assert event["event"] == "pam.import.uploaded"

        # ---- the auth string is in no log, no command line, no CLI output -------------------
        outputs = (out + log.read_text() + res.stdout + status.stdout + status.stderr
                   + added.stdout + added.stderr + imported.stdout + imported.stderr)
        assert auth not in outputs
        for path in home.rglob("*.log"):
            assert auth not in path.read_text(errors="replace"), path
        assert not [c for c in _cmdlines() if auth.encode() in c]
        worker_events = {"filter": {"event": {"prefix": ["prefect.worker."]}}, "limit": 50}
        for path, body in [("/events/filter", {"limit": 50}), ("/events/filter", worker_events),
                           ("/deployments/filter", {}),
                           ("/flow_runs/filter", {}), ("/block_documents/filter", {}),
                           ("/variables/filter", {})]:
            found = httpx.post(api + path, json=body, timeout=30, headers=authed)
            assert found.status_code == 200 and auth not in found.text, path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:  # stopping waits for flow runs, worker, gateway and server in turn (each up
            # to 20 s on a loaded machine): generous, and a hang still fails the test
            proc.wait(180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    # everything it started is gone
    try:
        httpx.get(f"{api}/health", timeout=2)
        server_alive = True
    except httpx.HTTPError:
        server_alive = False
    assert not server_alive
    assert "Stopping pamflow" in log.read_text()


# ---- the auth file --------------------------------------------------------------------------

def test_the_auth_file_is_created_once_atomically_and_0600(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        values = set(pool.map(lambda _: platform.ensure_api_auth(tmp_path), range(32)))
    assert len(values) == 1
    path = tmp_path / platform.AUTH_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert platform.ensure_api_auth(tmp_path) == values.pop()
    assert [p.name for p in tmp_path.iterdir()] == [platform.AUTH_FILE]  # no temporary left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_an_auth_file_open_to_others_is_refused(tmp_path, mode):
    platform.ensure_api_auth(tmp_path)
    path = tmp_path / platform.AUTH_FILE
    path.chmod(mode)
    refused = r"open to group or others \(mode 0\d+\): run `chmod 600 "
    with pytest.raises(platform.AuthFileError, match=refused):
        platform.ensure_api_auth(tmp_path)
    # the CLI refuses too, before talking to Prefect, and never prints the secret
    api = "http://127.0.0.1:9/api"
    platform.record_api_url(tmp_path, api)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_AUTH_STRING"}
    res = _cli("robots", env={**env, "PAMFLOW_HOME": str(tmp_path), "PREFECT_API_URL": api})
    assert res.returncode == 1 and "chmod 600" in res.stdout + res.stderr
    assert path.read_text().strip() not in res.stdout + res.stderr


def test_the_auth_string_is_sent_only_to_the_server_up_started(tmp_path):
    auth = platform.ensure_api_auth(tmp_path)
    platform.record_api_url(tmp_path, "http://127.0.0.1:4200/api")
    assert platform.local_api_auth(tmp_path, "http://127.0.0.1:4200/api/") == auth
    assert platform.local_api_auth(tmp_path, "http://127.0.0.1:4201/api") is None
    assert platform.local_api_auth(tmp_path, "https://prefect.example.com/api") is None
