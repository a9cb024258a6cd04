"""The README's first command: `pamflow up` starts everything, lists robots, stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from pamflow import platform

ROOT = Path(__file__).resolve().parent.parent


def _deployment_names() -> set[str]:
    return {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def test_up_runs_the_platform_and_stops_on_ctrl_c(tmp_path):
    port, gw_port = platform.free_port(), platform.free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PAMFLOW_DATABASE_URL", "PREFECT_HOME",
                        "PAMFLOW_MASTER_KEY")}
    env.update(PAMFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "client"))
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
        assert (tmp_path / "home" / "prefect" / "prefect.db").exists()
        # the store and the master key (0600) were created
        assert (tmp_path / "home" / "pamflow.db").exists()
        assert oct((tmp_path / "home" / "master.key").stat().st_mode & 0o777) == "0o600"

        robots_env = {**env, "PREFECT_API_URL": api}
        res = subprocess.run([sys.executable, "-m", "pamflow.cli", "robots"], env=robots_env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        for name in _deployment_names():
            assert name in res.stdout, (name, res.stdout)
        res = subprocess.run([sys.executable, "-m", "pamflow.cli", "robots", "--json"],
                             env=robots_env, capture_output=True, text=True, timeout=120)
        panel = {row["name"]: row for row in json.loads(res.stdout)}
        assert set(panel) == _deployment_names()
        assert panel["connectivity-test"]["schedule"].startswith("cron ")
        assert panel["connectivity-test"]["status"] == "active"
        assert panel["batch-import-processing"]["triggers"] == "pam.import.uploaded"
        assert panel["connectivity-test"]["next_run"] is not None
        # every robot carries the checkout's commit as its version
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        if head:
            versions = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
            assert {d["version"] for d in versions} == {head}

        # a worker is online in the process pool and the gateway answers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([sys.executable, "-m", "pamflow.cli", "status"],
                                    env={**robots_env,
                                         "PAMFLOW_GATEWAY_URL": f"http://127.0.0.1:{gw_port}"},
                                    capture_output=True, text=True, timeout=120)
            if (status.returncode == 0 and re.search(r"[1-9]\d* worker\(s\) online", status.stdout)
                    and re.search(r"gateway .* healthy", status.stdout)):
                break
            time.sleep(2)
        assert status.returncode == 0, status.stdout + status.stderr
        assert re.search(r"prefect .* healthy", status.stdout)
        assert re.search(r"gateway .* healthy", status.stdout), status.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
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
