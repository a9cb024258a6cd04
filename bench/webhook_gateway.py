"""Webhook gateway benchmark: accepted calls per second and p50/p99 latency on loopback.

Target: at least 1,000 accepted calls per second with p99 under 50 ms on 2 cores.

The gateway runs as in production: ``pamflow webhooks serve`` (uvicorn, ``--workers``) on a
fresh embedded SQLite store, every accepted call written to the outbox before its 202 and
forwarded to an events sink (``--prefect URL`` forwards to a real Prefect API instead).
The load generator is ``wrk`` on loopback with pre-signed requests: HMAC needs a
signature per request and a unique delivery id each, so the bench signs enough requests
up front (``--rate-guess`` x ``--duration`` x 2) and a Lua script hands each one out once.

In the same run and with the same wrk settings, the peer: a bare uvicorn ASGI app that
answers 202 without any check or write (the ceiling of the HTTP stack on this machine).

    .venv/bin/python -m bench.webhook_gateway [--duration 10] [--connections 16] [--workers 1]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx

from pamflow.platform import free_port
from pamflow.webhooks.signing import sign

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

LUA = r"""
local counter = 1
local threads = {}
function setup(thread)
  thread:set("id", counter); counter = counter + 1; table.insert(threads, thread)
end
function init(args)
  -- each thread builds its own share of the pre-signed requests (line i goes to thread i % N)
  reqs = {}; n202 = 0; n409 = 0; nother = 0
  local nthreads = tonumber(os.getenv("BENCH_THREADS"))
  local i = 0
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    if i % nthreads == id - 1 then
      local ts, delivery, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      table.insert(reqs, wrk.format("POST", "/hooks/import", {
        ["Host"] = "127.0.0.1", ["Content-Type"] = "application/json",
        ["X-Pamflow-Timestamp"] = ts, ["X-Pamflow-Delivery"] = delivery,
        ["X-Pamflow-Event"] = "uploaded", ["X-Pamflow-Signature"] = sig}, body))
    end
    i = i + 1
  end
  idx = 1
end
function request()
  local r = reqs[idx]
  if r == nil then idx = 1; r = reqs[1] end
  idx = idx + 1
  return r
end
local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pace > 0 then
  function delay() return pace end
end
function response(status, headers, body)
  if status == 202 then n202 = n202 + 1 elseif status == 409 then n409 = n409 + 1
  else nother = nother + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("n202"); b = b + t:get("n409"); c = c + t:get("nother") end
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "accepted": %d, "replays": %d, '
    .. '"other": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, '
    .. '"errors": %d}\n',
    summary.requests, summary.duration, a, b, c, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""

PEER_APP = textwrap.dedent('''
    BODY = b'{"event_id":"00000000-0000-0000-0000-000000000000","event":"pam.import.uploaded"}'

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": BODY})
''')

SINK_APP = textwrap.dedent('''
    import json
    COUNT = {"events": 0}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            m = await receive(); chunks.append(m.get("body", b"")); more = m.get("more_body", False)
        if scope["path"].endswith("/events"):
            COUNT["events"] += len(json.loads(b"".join(chunks)))
            status, body = 204, b""
        else:
            status, body = 200, json.dumps(COUNT).encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})
''')


def write_requests(path: Path, secret: str, count: int) -> None:
    """``count`` pre-signed calls (unique delivery ids), one per line: ts, delivery, sig, body."""
    now = int(time.time())
    with path.open("w") as fh:
        for i in range(count):
            body = json.dumps({"path": f"/uploads/bench/{i}.csv"})
            delivery = uuid.uuid4().hex
            sig = sign(secret, now, delivery, "uploaded", body.encode())
            fh.write(f"{now}\t{delivery}\t{sig}\t{body}\n")


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def run_wrk(url: str, requests_file: Path, duration: int, connections: int, threads: int,
            delay_ms: int = 0) -> dict:
    script = requests_file.parent / "bench.lua"
    script.write_text(LUA)
    proc = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
                          "--latency", "-s", str(script), url],
                         env={**os.environ, "BENCH_REQUESTS": str(requests_file),
                              "BENCH_THREADS": str(threads), "BENCH_DELAY_MS": str(delay_ms)},
                         capture_output=True, text=True, check=True)
    out = proc.stdout
    match = re.search(r"RESULT (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk gave no result:\n{out[-300:]}\n{proc.stderr[-2000:]}")
    result = json.loads(match.group(1))
    result["per_second"] = result["requests"] / (result["duration_us"] / 1e6)
    result["accepted_per_second"] = result["accepted"] / (result["duration_us"] / 1e6)
    return result


def serve(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    from pamflow.platform import stop as stop_proc

    stop_proc(proc, deadline=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--workers", type=int, default=1, help="gateway uvicorn workers")
    ap.add_argument("--paced-connections", type=int, default=12,
                    help="connections of the paced run (each waits --delay-ms between calls)")
    ap.add_argument("--delay-ms", type=int, default=7, help="pause per connection in the paced run")
    ap.add_argument("--rate-guess", type=int, default=4000, help="requests/s to pre-sign for")
    ap.add_argument("--prefect", default=None, help="forward to this Prefect API instead of a sink")
    ap.add_argument("--pg", action="store_true", help="store on a fresh PostgreSQL database")
    opts = ap.parse_args()

    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="pamflow-bench-gw-"))
    env = {**os.environ, "DO_NOT_TRACK": "1", "PAMFLOW_HOME": str(tmp / "home"),
           "PAMFLOW_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    (tmp / "home").mkdir()
    pg_name = None
    if opts.pg:
        from tests.fixtures.stores import create_pg_database

        pg_name = create_pg_database()
        env["PAMFLOW_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        env["PAMFLOW_DATABASE_URL"] = f"sqlite:///{tmp / 'home' / 'pamflow.db'}"
    procs: list[subprocess.Popen] = []
    try:
        sink_url = opts.prefect
        if not sink_url:
            (tmp / "sink.py").write_text(SINK_APP)
            sink_port = free_port()
            sink = serve([PY, "-m", "uvicorn", "--app-dir", str(tmp), "sink:app", "--port", str(sink_port),
                          "--log-level", "warning"], env, tmp / "sink.log")
            procs.append(sink)
            sink_url = f"http://127.0.0.1:{sink_port}/api"
            wait_http(f"{sink_url}/count", sink)
        env["PREFECT_API_URL"] = sink_url

        added = subprocess.run([PY, "-m", "pamflow.cli", "webhooks", "add-source", "import"], env=env,
                               capture_output=True, text=True, check=True, cwd=ROOT)
        secret = added.stdout.strip().splitlines()[-1]
        count = opts.rate_guess * opts.duration * 2
        t0 = time.perf_counter()
        write_requests(tmp / "requests.txt", secret, count)
        write_requests(tmp / "paced.txt", secret, 2000 * opts.duration)
        sign_s = time.perf_counter() - t0

        # the peer: bare uvicorn, same wrk settings
        (tmp / "peer.py").write_text(PEER_APP)
        peer_port = free_port()
        peer = serve([PY, "-m", "uvicorn", "--app-dir", str(tmp), "peer:app", "--port", str(peer_port),
                      "--log-level", "warning", "--no-access-log", "--workers", str(opts.workers)],
                     env, tmp / "peer.log")
        procs.append(peer)
        wait_http(f"http://127.0.0.1:{peer_port}/", peer)
        peer_result = run_wrk(f"http://127.0.0.1:{peer_port}", tmp / "requests.txt", opts.duration,
                              opts.connections, opts.threads)
        peer_paced = run_wrk(f"http://127.0.0.1:{peer_port}", tmp / "paced.txt", opts.duration,
                             opts.paced_connections, opts.threads, opts.delay_ms)
        stop(peer)

        port = free_port()
        gw = serve([PY, "-m", "pamflow.cli", "webhooks", "serve", "--port", str(port),
                    "--workers", str(opts.workers), "--log-level", "warning"], env, tmp / "gateway.log")
        procs.append(gw)
        wait_http(f"http://127.0.0.1:{port}/health", gw)
        result = run_wrk(f"http://127.0.0.1:{port}", tmp / "requests.txt", opts.duration,
                         opts.connections, opts.threads)
        paced = run_wrk(f"http://127.0.0.1:{port}", tmp / "paced.txt", opts.duration,
                        opts.paced_connections, opts.threads, opts.delay_ms)
        # every accepted call must reach the sink (or Prefect) once: wait for the outbox to drain
        t_end = time.monotonic()
        while time.monotonic() < t_end + 60:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
            if health["outbox_pending"] == 0:
                break
            time.sleep(0.2)
        drained_s = time.monotonic() - t_end
        forwarded = (httpx.get(f"{sink_url}/count").json()["events"] if not opts.prefect else None)
        # the gateway's own count includes calls wrk sent but stopped waiting for at the end
        accepted_total = (health["accepted"] if opts.workers == 1 else None)

        store = "PostgreSQL" if opts.pg else "SQLite"
        print(f"machine: {os.cpu_count()} CPUs; wrk -t{opts.threads} -c{opts.connections} "
              f"-d{opts.duration}s on loopback; {count} requests pre-signed in {sign_s:.1f}s")
        print(f"load average before: {load:.1f}")
        print(f"gateway (pamflow webhooks serve, {opts.workers} uvicorn worker(s), {store} outbox, "
              f"forwarding to {'Prefect' if opts.prefect else 'an events sink'}):")
        for label, r in ((f"paced (-c{opts.paced_connections}, {opts.delay_ms} ms between calls)", paced),
                         (f"saturating (-c{opts.connections})", result)):
            print(f"  {label}: {r['accepted_per_second']:6.0f} accepted/s  ({r['accepted']} accepted, "
                  f"{r['replays']} replays, {r['other']} other, {r['errors']} socket errors)")
            print(f"    latency p50 {r['p50_ms']:.1f} ms  p90 {r['p90_ms']:.1f} ms  "
                  f"p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms")
        if forwarded is not None:
            print(f"  forwarded to the sink: {forwarded} events"
                  + (f" (the gateway accepted {accepted_total})" if accepted_total is not None else "")
                  + f"; outbox drained {drained_s:.1f}s after the load ended")
        print(f"peer (bare uvicorn ASGI app answering 202, no checks, no store, "
              f"{opts.workers} worker(s)):")
        for label, r in (("paced", peer_paced), ("saturating", peer_result)):
            print(f"  {label}: {r['per_second']:6.0f} requests/s; latency p50 {r['p50_ms']:.1f} ms  "
                  f"p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms")
        ok = (paced["accepted_per_second"] >= 1000 and paced["p99_ms"] < 50 and paced["other"] == 0
              and result["other"] == 0)
        if forwarded is not None and accepted_total is not None and forwarded != accepted_total:
            print(f"MISMATCH: {accepted_total} accepted but {forwarded} forwarded")
            ok = False
        print(f"target >= 1,000 accepted/s with p99 < 50 ms (paced run): {'MET' if ok else 'NOT MET'}")
    finally:
        for proc in procs:
            stop(proc)
        if pg_name:
            from tests.fixtures.stores import drop_pg_database

            drop_pg_database(pg_name)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
