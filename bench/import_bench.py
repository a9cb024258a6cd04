"""Batch import benchmark: 100,000 rows with credentials (encryption included).

Targets: CSV in at most 10 s, XLSX in at most 30 s, on the embedded SQLite
store. Also measured in the same run: a re-import of the same CSV (every row compared,
secrets decrypted, nothing written), the file's bare parse with the standard library's
``csv`` module and with openpyxl (the floor under our figures), and PostgreSQL when it
answers on 127.0.0.1:5432.

    .venv/bin/python -m bench.import_bench [--rows 100000] [--no-pg] [--flow]

``--flow`` also runs the Prefect flow ``batch_import_processing`` on the CSV against a
temporary Prefect server (its task runs are per chunk of 5,000 rows).
"""

from __future__ import annotations

import argparse
import base64
import csv
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

HEADER = ["name", "address", "platform", "ports", "site", "tenant", "change_protocol", "username",
          "password", "kind", "change_interval_days"]


def make_rows(n: int) -> list[list]:
    rows = []
    for i in range(n):
        windows = i % 5 == 0
        rows.append([
            f"srv-{i:06d}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "windows" if windows else "linux", "5985;3389" if windows else "22",
            f"site-{i % 7}", "" if i % 2 else "default", "winrm" if windows else "ssh",
            "Administrator" if windows else "root", secrets.token_urlsafe(18),
            "local", 90,
        ])
    return rows


def write_csv(path: Path, rows: list[list]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(HEADER)
        out.writerows(rows)


def write_xlsx(path: Path, rows: list[list]) -> None:
    import openpyxl

    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("import")
    ws.append(HEADER)
    for r in rows:
        ws.append(r)
    wb.save(path)


def timed(fn, *args, **kw):
    start = time.perf_counter()
    value = fn(*args, **kw)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--flow", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pamflow-import-bench-"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PAMFLOW_HOME"] = str(work / "home")
    os.environ["PAMFLOW_UPLOAD_DIR"] = str(work)  # imports read only from the upload directory
    os.environ["PAMFLOW_MASTER_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()
    from pamflow import db, inventory
    from pamflow.vault import vault

    vault()  # opened (key checked against the store) before anything is timed
    try:
        rows = make_rows(args.rows)
        csv_path, xlsx_path = work / "devices.csv", work / "devices.xlsx"
        write_csv(csv_path, rows)
        write_xlsx(xlsx_path, rows)
        del rows
        results: list[tuple] = []

        # the floor: parsing alone, standard library and openpyxl
        def parse_csv():
            with csv_path.open(newline="") as fh:
                return sum(1 for _ in csv.reader(fh)) - 1

        def parse_xlsx():
            import openpyxl

            wb = openpyxl.load_workbook(xlsx_path, read_only=True, data_only=True)
            n = sum(1 for _ in wb.worksheets[0].iter_rows(values_only=True)) - 1
            wb.close()
            return n

        secs, n = timed(parse_csv)
        results.append(("peer", "csv.reader parse only", secs, n, None))
        secs, n = timed(parse_xlsx)
        results.append(("peer", "openpyxl read_only parse only", secs, n, None))
        secs, sheet = timed(inventory.read_sheet, csv_path)
        results.append(("pamflow", "CSV read + validate", secs, sheet.total_rows, None))
        secs, sheet = timed(inventory.read_sheet, xlsx_path)
        results.append(("pamflow", "XLSX read + validate", secs, sheet.total_rows, None))
        del sheet

        sqlite_url = f"sqlite:///{work / 'csv.db'}"
        db.reset_engines()
        engine = db.store(sqlite_url)
        secs, res = timed(inventory.import_file, csv_path, engine)
        assert res.created == res.rows and res.rejected == 0, res.summary()
        results.append(("SQLite", "CSV import (new store)", secs, res.rows, 10.0))
        secs, res = timed(inventory.import_file, csv_path, engine)
        assert res.unchanged == res.rows, res.summary()
        results.append(("SQLite", "CSV re-import (no changes)", secs, res.rows, None))

        db.reset_engines()
        engine = db.store(f"sqlite:///{work / 'xlsx.db'}")
        secs, res = timed(inventory.import_file, xlsx_path, engine)
        assert res.created == res.rows and res.rejected == 0, res.summary()
        results.append(("SQLite", "XLSX import (new store)", secs, res.rows, 30.0))
        db.reset_engines()

        if not args.no_pg:
            results.extend(_bench_pg(csv_path, xlsx_path))
        if args.flow:
            results.extend(_bench_flow(csv_path, work))

        print(f"\nBatch import benchmark — {args.rows:,} rows with credentials "
              f"(AES-GCM encryption included)\n")
        print(f"{'store':<10} {'what':<34} {'seconds':>8} {'rows/s':>10}  target")
        failed = False
        for store, what, secs, n, target in results:
            verdict = ""
            if target is not None:
                ok = secs <= target * args.rows / 100_000
                failed |= not ok
                verdict = f"<= {target:.0f} s  {'OK' if ok else 'MISSED'}"
            print(f"{store:<10} {what:<34} {secs:8.2f} {n / secs:10,.0f}  {verdict}")
        if failed:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench_pg(csv_path: Path, xlsx_path: Path) -> list[tuple]:
    import sqlalchemy as sa

    from pamflow import db, inventory

    admin_url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    name = f"pamflow_bench_{secrets.token_hex(4)}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL not reachable ({exc.__class__.__name__}); skipped")
        return []
    out = []
    try:
        db.reset_engines()
        engine = db.store(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        secs, res = timed(inventory.import_file, csv_path, engine)
        assert res.created == res.rows, res.summary()
        out.append(("PostgreSQL", "CSV import (new store)", secs, res.rows, None))
        secs, res = timed(inventory.import_file, csv_path, engine)
        assert res.unchanged == res.rows, res.summary()
        out.append(("PostgreSQL", "CSV re-import (no changes)", secs, res.rows, None))
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE credential_history, credential, device CASCADE"))
        secs, res = timed(inventory.import_file, xlsx_path, engine)
        assert res.created == res.rows, res.summary()
        out.append(("PostgreSQL", "XLSX import (new store)", secs, res.rows, None))
    finally:
        db.reset_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return out


def _bench_flow(csv_path: Path, work: Path) -> list[tuple]:
    from pamflow import db, platform

    port = platform.free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = platform.start_server(work / "prefect", port)
    try:
        platform.wait_healthy(url, timeout=120, proc=proc)
        os.environ["PREFECT_API_URL"] = url
        os.environ["PAMFLOW_DATABASE_URL"] = f"sqlite:///{work / 'flow.db'}"
        db.reset_engines()
        from flows.batch_import import batch_import_processing

        secs, summary = timed(batch_import_processing, str(csv_path))
        assert summary["created"] == summary["rows"], summary
        return [("SQLite", "CSV via the Prefect flow", secs, summary["rows"], None)]
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # deliver logs before the server goes away
        EventsWorker.drain_all(timeout=10)
        platform.stop(proc)


if __name__ == "__main__":
    main()
