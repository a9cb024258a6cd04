"""What one system-monitor pass costs, against its floor: the bare psutil reads it makes.

    .venv/bin/python -m bench.monitors_cost [--passes 20]

pamflow's pass = CPU and memory (samples and episodes kept in the store), disk space of
"/", two listeners and the database service, on an embedded SQLite store. The floor = the
same psutil calls alone (cpu_times, virtual_memory, disk_usage, net_connections), no
store. Prints wall and CPU milliseconds per pass for both (the idle cost of the robot
beyond Prefect's own flow-run overhead).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable


def measure(fn: Callable[[], object], passes: int) -> tuple[float, float]:
    fn()  # warm
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(passes):
        fn()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return 1000 * (t1 - t0) / passes, 1000 * cpu / passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    os.environ["PAMFLOW_HOME"] = tempfile.mkdtemp(prefix="pamflow-bench-")
    import psutil

    from pamflow import db
    from pamflow.monitors.disk import check_disks
    from pamflow.monitors.listeners import check_listeners_and_services, database_alive
    from pamflow.monitors.settings import Listener, MonitorSettings
    from pamflow.monitors.usage import PsutilUsage, check_usage

    engine = db.store(f"sqlite:///{os.environ['PAMFLOW_HOME']}/bench.db")
    cfg = MonitorSettings(listeners=(Listener(name="ssh", port=22), Listener(name="pg", port=5432)))

    def pamflow_pass() -> None:
        check_usage(engine, PsutilUsage(), cfg)
        check_disks(engine, cfg)
        check_listeners_and_services(engine, cfg.listeners, {"database": lambda: database_alive(engine)})

    def bare_psutil() -> None:
        psutil.cpu_times()
        psutil.virtual_memory()
        psutil.disk_usage("/")
        psutil.net_connections(kind="tcp")

    for name, fn in (("system-monitor pass (pamflow)", pamflow_pass), ("bare psutil reads", bare_psutil)):
        wall, cpu = measure(fn, args.passes)
        print(f"{name:32s} {wall:8.1f} ms wall {cpu:8.1f} ms CPU per pass ({args.passes} passes)")


if __name__ == "__main__":
    main()
