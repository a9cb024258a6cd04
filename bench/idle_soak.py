"""Idle cost and soak of the embedded platform (issue 15).

    .venv/bin/python -m bench.idle_soak idle --minutes 5
    .venv/bin/python -m bench.idle_soak soak --minutes 30

**idle** — side by side in one run: `pamflow up` (embedded default: Prefect on SQLite,
worker, gateway, the executor service instance) on a fresh data directory, and a bare Prefect
server (Prefect's defaults, SQLite) with a process worker and no deployment. After a
warm-up both are left alone for ``--minutes``; the CPU each *process tree* used meanwhile
(``utime+stime`` of every live process of the tree plus what its reaped children used,
``/proc/<pid>/stat``) is divided by the wall time: the average cores it kept busy. The
machine is shared, so per-tree figures are the comparison; the whole machine's busy cores
(``/proc/stat``) are printed for context. Flow runs per idle hour: the runs the platform's
Prefect created during the window, extrapolated to an hour (said so in the output), and the
runs its scheduler has planned for the next hour.

**soak** — `pamflow up` on a fresh data directory with a real sshd (tests/peers/sshd.py,
needs root): a device with ``--accounts`` accounts; at a steady rate a password change is
queued (``--rotation-every`` s, round robin; the executor service runs it), a spreadsheet
import is posted to the gateway as a webhook (``--import-every`` s: the batch import robot
runs), and a reservation request is posted (``--reservation-every`` s: the reservation
robot makes it, the reservation duty ends it, which queues a change). At the end: lock
errors and ERROR lines in the Prefect server's log, runs stuck (pending, late or running
past their time; the executor service excluded), operations not finished, and each
process's RSS at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- /proc ----------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(root: int) -> list[int]:
    from pamflow.platform import descendants

    return [root, *descendants(root)]


def tree_cpu_s(roots: list[int]) -> float:
    """CPU seconds used by the trees under ``roots`` (live processes and reaped children)."""
    total = 0
    for root in roots:
        for pid in tree(root):
            f = _stat(pid)
            if f is None or f[0] == "Z":
                continue
            # fields after the name: state=0 ... utime=11 stime=12 cutime=13 cstime=14
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICK


def machine_busy() -> tuple[int, int]:
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    for marker, name in (("server start", "prefect server"), ("worker start", "worker"),
                         ("webhooks serve", "gateway"), ("pamflow up", "pamflow up"),
                         ("_workspace_supervisor", "flow run"),
                         ("prefect.engine", "flow run"), ("flow_run", "flow run"),
                         ("uvicorn", "prefect server")):
        if marker in cmd:
            return name
    return "other: " + cmd[:60]


def rss_by_role(root: int) -> dict[str, float]:
    """MiB of resident memory per role under ``root``."""
    out: Counter = Counter()
    for pid in tree(root):
        f = _stat(pid)
        if f is None or f[0] == "Z":
            continue
        out[role(pid)] += int(f[21]) * PAGE / 2**20  # rss (pages) is field 24 of stat
    return {k: round(v, 1) for k, v in sorted(out.items())}


# ---- the platform ---------------------------------------------------------------------------
def free_port() -> int:
    from pamflow.platform import free_port as fp

    return fp()


class Platform:
    """`pamflow up` on a fresh data directory."""

    def __init__(self, work: Path, env: dict | None = None) -> None:
        self.home = work / "home"
        self.port, self.gw_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.gateway = f"http://127.0.0.1:{self.gw_port}"
        drop = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PAMFLOW_DATABASE_URL",
                "PAMFLOW_MASTER_KEY", "PREFECT_HOME")
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env.update(PAMFLOW_HOME=str(self.home), PREFECT_HOME=str(work / "client"),
                        DO_NOT_TRACK="1", **(env or {}))
        self.log = work / "up.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> None:
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "pamflow"), "up", "--port", str(self.port), "--gateway-port",
             str(self.gw_port)], env=self.env, stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while "pamflow is up" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pamflow up did not come up:\n" + self.log.read_text()[-3000:])
            time.sleep(1)
        self.auth = (self.home / "prefect-api-auth").read_text().strip()
        from pamflow.platform import auth_headers

        self.client = httpx.Client(base_url=self.api, headers=auth_headers(self.auth), timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(180)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def post(self, path: str, body: dict) -> list | dict:
        from pamflow.platform import api_call

        return api_call(self.client, "POST", path, json=body).json()

    def runs_created_between(self, start: datetime, end: datetime) -> list[dict]:
        runs: list[dict] = []
        offset = 0
        while True:
            page = self.post("/flow_runs/filter", {"offset": offset, "limit": 200})
            runs.extend(r for r in page if start.isoformat() <= _norm(r["created"]) < end.isoformat())
            if len(page) < 200:
                return runs
            offset += 200

    def deployment_names(self) -> dict[str, str]:
        return {d["id"]: d["name"] for d in self.post("/deployments/filter", {})}


def _norm(stamp: str) -> str:
    """Prefect's timestamps ('...Z' or '+00:00') as comparable ISO strings."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).isoformat()


class Bare:
    """A bare Prefect server (its defaults, SQLite) and a process worker, no deployment."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PREFECT_", "PAMFLOW_"))}
        self.env.update(PREFECT_HOME=str(work / "prefect"), DO_NOT_TRACK="1",
                        PREFECT_SERVER_ANALYTICS_ENABLED="false")
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        from pamflow.platform import wait_healthy

        log = (self.work / "server.log").open("ab")
        self.procs.append(subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
             str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True))
        wait_healthy(self.api, timeout=600, proc=self.procs[0])
        client_env = {**self.env, "PREFECT_API_URL": self.api}
        subprocess.run([str(VENV_BIN / "prefect"), "work-pool", "create", "bare", "--type",
                        "process"], env=client_env, capture_output=True, check=True)
        self.procs.append(subprocess.Popen(
            [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "bare", "--type",
             "process"], env=client_env, stdout=(self.work / "worker.log").open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True))

    def stop(self) -> None:
        from pamflow.platform import stop

        for proc in reversed(self.procs):
            stop(proc)


# ---- idle -----------------------------------------------------------------------------------
def idle(opts) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pamflow-idle-"))
    (work / "platform").mkdir()
    (work / "bare").mkdir()
    platform, bare = Platform(work / "platform"), Bare(work / "bare")
    try:
        print("starting `pamflow up` and a bare Prefect server + worker…", flush=True)
        bare.start()
        platform.start()
        print(f"warm-up {opts.warmup:.0f}s…", flush=True)
        time.sleep(opts.warmup)
        roots_p = [platform.proc.pid]
        roots_b = [p.pid for p in bare.procs]
        t0, wall0 = time.monotonic(), datetime.now(UTC)
        cpu_p0, cpu_b0, m0 = tree_cpu_s(roots_p), tree_cpu_s(roots_b), machine_busy()
        time.sleep(opts.minutes * 60)
        cpu_p1, cpu_b1, m1 = tree_cpu_s(roots_p), tree_cpu_s(roots_b), machine_busy()
        elapsed, wall1 = time.monotonic() - t0, datetime.now(UTC)
        cores = os.cpu_count() or 1
        runs = platform.runs_created_between(wall0, wall1)
        names = platform.deployment_names()
        horizon = wall1 + timedelta(hours=1)
        planned = [r for r in platform.post("/flow_runs/filter", {
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}},
                          "expected_start_time": {"after_": wall1.isoformat(),
                                                  "before_": horizon.isoformat()}},
            "limit": 200})]
        result = {
            "window_s": round(elapsed, 1),
            "platform_cores": round((cpu_p1 - cpu_p0) / elapsed, 4),
            "bare_cores": round((cpu_b1 - cpu_b0) / elapsed, 4),
            "machine_busy_cores": round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * cores, 3),
            "flow_runs_in_window": len(runs),
            "flow_runs_in_window_by_robot": dict(Counter(names.get(r.get("deployment_id"), "?")
                                                         for r in runs)),
            "flow_runs_per_hour_extrapolated": round(len(runs) * 3600 / elapsed, 1),
            "scheduled_for_next_hour": len(planned),
            "scheduled_for_next_hour_by_robot": dict(Counter(
                names.get(r.get("deployment_id"), "?") for r in planned)),
            "rss_mib_platform": rss_by_role(platform.proc.pid),
        }
        result["ratio"] = round(result["platform_cores"] / max(result["bare_cores"], 1e-6), 2)
        return result
    finally:
        platform.stop()
        bare.stop()


# ---- soak -----------------------------------------------------------------------------------
def soak(opts) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.peers.sshd import SSHD

    work = Path(tempfile.mkdtemp(prefix="pamflow-soak-"))
    sshd = SSHD.start(max_startups=200)
    platform = Platform(work)
    stop = threading.Event()
    counts: Counter = Counter()
    errors: list[str] = []
    try:
        platform.start()
        os.environ.update(PAMFLOW_HOME=str(platform.home), PREFECT_API_URL=platform.api,
                          PREFECT_API_AUTH_STRING=platform.auth)
        os.environ.pop("PAMFLOW_DATABASE_URL", None)
        from pamflow.db import store
        from pamflow.operations import queue
        from pamflow.webhooks import signed_headers
        from tests.test_rotation import add_credential, make_device, nasty

        engine = store()
        dev, _ = make_device(engine, sshd)
        creds = []
        for i in range(opts.accounts):
            pw = nasty(f"soak{i}")
            creds.append(add_credential(engine, dev, sshd.add_account(pw), pw))
        env = {**platform.env, "PREFECT_API_URL": platform.api}
        secrets = {}
        for source in ("import", "reservation"):
            res = subprocess.run([str(VENV_BIN / "pamflow"), "webhooks", "add-source", source],
                                 env=env, capture_output=True, text=True, check=True)
            secrets[source] = res.stdout.strip().splitlines()[-1]
        uploads = platform.home / "uploads"
        uploads.mkdir(exist_ok=True, mode=0o700)

        def hook(source: str, event: str, payload: dict) -> None:
            body = json.dumps(payload).encode()
            try:
                resp = httpx.post(f"{platform.gateway}/hooks/{source}", content=body,
                                  headers=signed_headers(secrets[source], event, body), timeout=30)
                counts[f"webhook {source} {resp.status_code}"] += 1
            except httpx.HTTPError as exc:
                counts[f"webhook {source} {exc.__class__.__name__}"] += 1

        def every(period: float, action) -> None:
            n = 0
            start = time.monotonic()
            while not stop.is_set():
                try:
                    action(n)
                except Exception as exc:  # noqa: BLE001 - counted, the soak goes on
                    errors.append(f"{exc.__class__.__name__}: {exc}"[:300])
                n += 1
                stop.wait(max(0.0, start + n * period - time.monotonic()))

        def rotate(n: int) -> None:
            queue.enqueue(engine, "change", creds[n % len(creds)].id, requested_by="soak")
            counts["rotations queued"] += 1

        def import_(n: int) -> None:
            name = f"soak-{n}.csv"
            rows = "".join(f"soak{n}-{i},10.{90 + n // 250}.{n % 250}.{i + 1},linux,22,root,"
                           f"Soak-Secret-{n}-{i},local\n" for i in range(5))
            (uploads / name).write_text("name,address,platform,ports,username,password,kind\n"
                                        + rows)
            hook("import", "uploaded", {"path": name})

        def reserve(n: int) -> None:
            now = datetime.now(UTC)
            hook("reservation", "requested", {
                "credential_id": creds[(n * 7 + 3) % len(creds)].id,
                "starts_at": (now + timedelta(seconds=5)).isoformat(),
                "ends_at": (now + timedelta(seconds=45)).isoformat(),
                "requested_by": "soak", "change_on_start": False, "change_on_end": True})

        rss_start = rss_by_role(platform.proc.pid)
        started = datetime.now(UTC)
        threads = [threading.Thread(target=every, args=(p, a), daemon=True) for p, a in (
            (opts.rotation_every, rotate), (opts.import_every, import_),
            (opts.reservation_every, reserve))]
        for t in threads:
            t.start()
        series = []
        end = time.monotonic() + opts.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(60, max(0, end - time.monotonic())))
            series.append(rss_by_role(platform.proc.pid))
            print(f"{datetime.now(UTC):%H:%M:%S} {dict(counts)} rss={series[-1]}", flush=True)
        stop.set()
        for t in threads:
            t.join(60)
        print(f"load stopped; letting queued work finish ({opts.drain_s:.0f}s)…", flush=True)
        time.sleep(opts.drain_s)
        rss_end = rss_by_role(platform.proc.pid)
        return {"minutes": opts.minutes, "load": dict(counts), "load_errors": errors[:20],
                **_soak_checks(platform, engine, started), "rss_mib_start": rss_start,
                "rss_mib_end": rss_end, "rss_mib_series": series}
    finally:
        stop.set()
        platform.stop()
        sshd.stop()


def _soak_checks(platform: Platform, engine, started: datetime) -> dict:
    from sqlmodel import Session, col, func, select

    from pamflow.models import Operation

    log = (platform.home / "prefect" / "server.log").read_text(errors="replace")
    lock_errors = len(re.findall(r"database is locked", log))
    error_lines = [line for line in log.splitlines() if re.search(r"\|\s*ERROR\s*\|", line)]
    runs: list[dict] = []
    offset = 0
    while True:
        page = platform.post("/flow_runs/filter", {"offset": offset, "limit": 200})
        runs.extend(page)
        if len(page) < 200:
            break
        offset += 200
    names = platform.deployment_names()
    service = {d["name"] for d in platform.post("/deployments/filter", {})
               if "service" in (d.get("tags") or [])}
    now = datetime.now(UTC)
    stuck = []
    for r in runs:
        name = names.get(r.get("deployment_id"), "?")
        state, label = r["state_type"], r.get("state_name")
        since = _norm(r.get("start_time") or r.get("expected_start_time") or r["created"])
        old = datetime.fromisoformat(since) < now - timedelta(minutes=5)
        if name in service and state == "RUNNING":
            continue
        if old and (state in ("PENDING", "RUNNING") or label == "Late"):
            stuck.append(f"{name} {r['name']} {label} since {since}")
    states = Counter(f"{names.get(r.get('deployment_id'), '?')}: {r['state_name']}" for r in runs
                     if _norm(r["created"]) >= started.isoformat())
    with Session(engine) as db:
        ops = dict(db.exec(select(Operation.state, func.count()).group_by(Operation.state)).all())
        unfinished = db.exec(select(func.count()).select_from(Operation).where(
            col(Operation.state).in_(["queued", "running"]),
            col(Operation.created_at) < now - timedelta(minutes=5))).one()
    return {"server_log_lock_errors": lock_errors, "server_log_error_lines": len(error_lines),
            "first_error_lines": error_lines[:5], "flow_runs_stuck": stuck,
            "flow_runs_by_robot_and_state": dict(sorted(states.items())),
            "operations_by_state": ops, "operations_unfinished_after_5_min": unfinished}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p_idle = sub.add_parser("idle")
    p_idle.add_argument("--minutes", type=float, default=5)
    p_idle.add_argument("--warmup", type=float, default=90)
    p_soak = sub.add_parser("soak")
    p_soak.add_argument("--minutes", type=float, default=30)
    p_soak.add_argument("--accounts", type=int, default=20)
    p_soak.add_argument("--rotation-every", type=float, default=5)
    p_soak.add_argument("--import-every", type=float, default=60)
    p_soak.add_argument("--reservation-every", type=float, default=60)
    p_soak.add_argument("--drain-s", type=float, default=90)
    parser.add_argument("--json", dest="out", type=Path, help="Also write the figures here.")
    opts = parser.parse_args(argv)
    result = idle(opts) if opts.mode == "idle" else soak(opts)
    print(json.dumps(result, indent=2, default=str))
    if opts.out:
        opts.out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
