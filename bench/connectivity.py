"""Connectivity benchmark: 10,000 endpoints on loopback, pamflow's prober against ``nmap -sT``.

Target: 10,000 endpoints (open and closed mixed) in at most 5 s, and at least as
fast as ``nmap -sT`` over the same endpoints in the same run.

The bench opens its own listeners: ``--hosts`` addresses 127.1.x.y (all of 127/8 is local
on Linux) times ``--ports`` port numbers; port j of host i listens when ``i % (j + 2) == 0``
(with 2 ports: 4,167 open and 5,833 refused endpoints; a third of the hosts answer on no
port). The endpoint set is a full hosts x ports product, so nmap gets exactly the same
endpoints from the same address list and port list (``-iL hosts -p P1,P2``).

Measured in one run:

1. ``pamflow.connectivity.probe`` (the domain function) over the endpoints, interleaved
   ``--repeat`` times with the two nmap runs of 4. (best, median and worst of each);
2. the full store update (``plan_batches`` + ``check_devices`` per batch of 1,000
   devices, 4 batches at once as the flow runs them) on a fresh embedded SQLite store
   (and PostgreSQL with ``--pg``): the first check, then a second one after some listeners
   closed, which records "Lost of connectivity" notifications and audit rows;
3. with ``--flow``, the Prefect flow ``connectivity_test`` itself on the SQLite store,
   against a temporary Prefect server (server start-up not timed; 5 task runs);
4. ``nmap -sT -Pn -n`` (default timing) and ``nmap -sT -Pn -n -T5`` over the same
   endpoints; their open counts are checked against pamflow's.

    .venv/bin/python -m bench.connectivity [--hosts 5000] [--ports 2] [--repeat 5] [--pg] [--flow]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise hard
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(wanted, hard)), hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def host_address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def is_open(i: int, j: int) -> bool:
    return i % (j + 2) == 0


def pick_ports(count: int) -> list[int]:
    """Port numbers free on 127.1.0.0/16 (checked on the first host when listening)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.1.0.1", 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


class Listeners:
    """The bench's open endpoints: one listening socket each (never accepted from)."""

    def __init__(self, hosts: int, ports: list[int]) -> None:
        self.socks: dict[tuple[int, int], socket.socket] = {}
        for i in range(hosts):
            for j, port in enumerate(ports):
                if is_open(i, j):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host_address(i), port))
                    s.listen(64)
                    self.socks[(i, j)] = s

    def close(self, which) -> int:
        closed = 0
        for key in [k for k in self.socks if which(*k)]:
            self.socks.pop(key).close()
            closed += 1
        return closed

    def close_all(self) -> None:
        self.close(lambda i, j: True)


def time_prober(targets, concurrency: int, processes: int = 1) -> tuple[float, int]:
    from pamflow.connectivity import probe

    started = time.perf_counter()
    results = probe(targets, connect_timeout=3.0, concurrency=concurrency, processes=processes)
    return time.perf_counter() - started, sum(p.answered for r in results for p in r.ports)


def make_store(url: str, hosts: int, ports: list[int]):
    import sqlalchemy as sa

    from pamflow import db
    from pamflow.models import Device, utcnow

    engine = db.store(url)
    now = utcnow()
    rows = [{"name": f"dev{i}", "address": host_address(i), "platform": "linux", "ports": ports,
             "tenant": "default", "source": "bench", "maintenance_mode": False, "active": True,
             "connectivity": "unknown", "settings": {}, "created_at": now, "updated_at": now}
            for i in range(hosts)]
    with engine.begin() as conn:
        conn.execute(sa.insert(Device.__table__), rows)
    return engine


def run_store_pass(engine, concurrency: int, batch_size: int = 1000, parallel: int = 4) -> tuple[float, dict]:
    from pamflow.connectivity import check_devices, plan_batches

    started = time.perf_counter()
    batches = plan_batches(engine, batch_size)
    with ThreadPoolExecutor(parallel) as pool:
        reports = list(pool.map(
            lambda b: check_devices(engine, b[0], b[1], connect_timeout=3.0, concurrency=concurrency),
            batches))
    seconds = time.perf_counter() - started
    return seconds, {
        "batches": len(batches),
        "tested": sum(r.tested for r in reports),
        "reachable": sum(r.reachable for r in reports),
        "unreachable": sum(r.unreachable for r in reports),
        "lost": sum(len(r.lost) for r in reports),
    }


def count_notifications(engine) -> int:
    import sqlalchemy as sa

    from pamflow.models import Notification

    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(Notification.__table__)).scalar_one()


def time_flow(store_url: str, workdir: Path, concurrency: int) -> tuple[float, dict]:
    """The real flow against a temporary Prefect server (its start-up is not timed)."""
    from pamflow import db, platform

    port = platform.free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = platform.start_server(workdir / "prefect-server", port)
    try:
        platform.wait_healthy(url, timeout=120, proc=proc)
        os.environ.update({"PREFECT_API_URL": url, "PREFECT_HOME": str(workdir / "prefect-client"),
                           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                           "PAMFLOW_DATABASE_URL": store_url})
        db.reset_engines()
        from flows.connectivity import connectivity_test

        started = time.perf_counter()
        summary = connectivity_test(batch_size=1000, connect_timeout=3.0, concurrency=concurrency)
        seconds = time.perf_counter() - started
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # deliver logs and events before the server goes
        EventsWorker.drain_all(timeout=10)
        return seconds, summary
    finally:
        platform.stop(proc)


def time_nmap(hosts: int, ports: list[int], workdir: Path, extra: list[str]) -> tuple[float, int, str]:
    hosts_file = workdir / "hosts.txt"
    hosts_file.write_text("".join(host_address(i) + "\n" for i in range(hosts)))
    out = workdir / "nmap.gnmap"
    cmd = ["nmap", "-sT", "-Pn", "-n", *extra, "-p", ",".join(map(str, ports)),
           "-iL", str(hosts_file), "-oG", str(out)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    opened = out.read_text().count("/open/")
    return seconds, opened, " ".join(cmd[:-4]).replace(str(hosts_file), "hosts.txt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--ports", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--pg", action="store_true", help="also time the store update on PostgreSQL")
    parser.add_argument("--no-nmap", action="store_true")
    parser.add_argument("--flow", action="store_true",
                        help="also run the Prefect flow against a temporary Prefect server")
    args = parser.parse_args()

    endpoints = args.hosts * args.ports
    limit = raise_nofile(endpoints + 4 * args.concurrency + 1024)
    ports = pick_ports(args.ports)
    workdir = Path(tempfile.mkdtemp(prefix="pamflow-bench-conn-"))
    os.environ["PAMFLOW_HOME"] = str(workdir / "home")
    listeners = Listeners(args.hosts, ports)
    expected_open = len(listeners.socks)
    print(f"endpoints: {endpoints} ({args.hosts} hosts 127.1.x.y x ports {ports}); "
          f"open {expected_open}, refused {endpoints - expected_open}; RLIMIT_NOFILE {limit}; "
          f"concurrency {args.concurrency}; {os.cpu_count()} CPUs")
    rows: list[tuple[str, int, int, float, str]] = []
    pg_name = None
    try:
        from pamflow.connectivity import Target

        targets = [Target(i, f"dev{i}", host_address(i), tuple(ports)) for i in range(args.hosts)]
        # interleaved, so a busy machine weighs on both tools alike
        timings: dict[str, list[float]] = {}
        nmap_variants = [] if args.no_nmap else [[], ["-T5"]]
        cores = os.cpu_count() or 1
        for _ in range(args.repeat):
            seconds, opened = time_prober(targets, args.concurrency, processes=cores)
            assert opened == expected_open, (opened, expected_open)
            timings.setdefault("pamflow probe()", []).append(seconds)
            seconds, opened = time_prober(targets, args.concurrency, processes=1)
            assert opened == expected_open, (opened, expected_open)
            timings.setdefault("pamflow probe(processes=1)", []).append(seconds)
            for extra in nmap_variants:
                seconds, nopen, cmd = time_nmap(args.hosts, ports, workdir, extra)
                assert nopen == expected_open, f"{cmd} saw {nopen} open, expected {expected_open}"
                timings.setdefault(cmd, []).append(seconds)
        for what, values in timings.items():
            rows.append((f"{what} (best of {len(values)})", endpoints, expected_open, min(values),
                         f"median {statistics.median(values):.3f} s, worst {max(values):.3f} s"))

        stores = [("sqlite", f"sqlite:///{workdir / 'bench.db'}")]
        if args.pg:
            from tests.fixtures.stores import create_pg_database

            pg_name = create_pg_database()
            stores.append(("postgresql", f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"))
        for label, url in stores:
            engine = make_store(url, args.hosts, ports)
            first, r1 = run_store_pass(engine, args.concurrency)
            assert r1["reachable"] + r1["unreachable"] == args.hosts and r1["lost"] == 0, r1
            rows.append((f"store update, first check ({label}, {r1['batches']} batches)", endpoints,
                         expected_open, first, f"{r1['unreachable']} unreachable"))
            # some devices lose their only open port: reachable -> unreachable
            closed = listeners.close(lambda i, j: j == 0 and i % 4 == 0 and i % 3 != 0)
            second, r2 = run_store_pass(engine, args.concurrency)
            notes = f"{r2['lost']} lost, {count_notifications(engine)} notifications queued"
            rows.append((f"store update, state changes ({label})", endpoints, expected_open - closed,
                         second, notes))
            listeners.close_all()  # reopen every listener for the next store
            listeners = Listeners(args.hosts, ports)
        if args.flow:  # the listeners are all open again: the devices lost above are restored
            seconds, summary = time_flow(stores[0][1], workdir, args.concurrency)
            rows.append((f"Prefect flow connectivity_test (sqlite, {summary['batches']} task runs)",
                         endpoints, expected_open, seconds,
                         f"{summary['restored']} restored, {summary['unreachable']} unreachable"))
    finally:
        listeners.close_all()
        if pg_name:
            from tests.fixtures.stores import drop_pg_database

            drop_pg_database(pg_name)
        shutil.rmtree(workdir, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'what':<{width}}  {'endpoints':>9}  {'open':>6}  {'seconds':>8}  {'endpoints/s':>11}  notes")
    for what, n, nopen, seconds, notes in rows:
        print(f"{what:<{width}}  {n:>9}  {nopen:>6}  {seconds:>8.3f}  {n / seconds:>11.0f}  {notes}")
    best = min(timings["pamflow probe()"])
    print()
    print(f"pamflow probe(): best {best:.3f} s (target <= 5 s: {'met' if best <= 5 else 'NOT met'})")
    nmap_best = [min(v) for k, v in timings.items() if k.startswith("nmap")]
    if nmap_best:
        fastest = min(nmap_best)
        print(f"nmap -sT fastest: {fastest:.3f} s -> pamflow is {fastest / best:.2f}x "
              f"{'as fast or faster' if best <= fastest else 'SLOWER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
