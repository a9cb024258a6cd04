"""Purge and sealing benchmarks, side by side in one run.

1. Purge N expired rows on PostgreSQL: pamflow's archiver (rows archived to gzip files,
   then deleted, batch by batch) against a bare batched
   ``DELETE … WHERE ctid IN (SELECT ctid … LIMIT n)`` loop (no archive), each with a
   concurrent writer inserting a row every 10 ms: rows per second and the longest time the
   writer waited for one insert + commit.
2. Seal and verify M audit records (SQLite store), against ``sha256sum`` over the same
   bytes (the chained payloads) as the floor.

    .venv/bin/python -m bench.purge_bench --rows 10000000 --audit 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_db() -> tuple[str, str]:
    name = f"pamflow_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _drop(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _fill(engine, rows: int) -> None:
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO notification (type, family, subject, body, recipients, context, state, "
            "attempts, created_at) SELECT 'Audit trail', 'Audit Trail', 'subject ' || g, "
            "'body of notification ' || g, '[]', '{}', 'sent', 0, "
            "now() - interval '400 days' + g * interval '1 millisecond' "
            "FROM generate_series(1, :n) g"), {"n": rows})
        c.execute(sa.text("ANALYZE notification"))


def _write_loop(url: str, stop, ready, out) -> None:
    """In its own process (no GIL shared with the purge): one insert every 10 ms; puts the
    longest insert + commit and the count."""
    engine = sa.create_engine(url)
    worst, count = 0.0, 0
    while not stop.is_set():
        t = time.perf_counter()
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO notification (type, family, subject, body, recipients, context, "
                "state, attempts, created_at) VALUES ('Audit trail', 'Audit Trail', 'w', 'w', "
                "'[]', '{}', 'queued', 0, now())"))
        worst, count = max(worst, time.perf_counter() - t), count + 1
        ready.set()
        time.sleep(0.01)
    out.put((worst, count))


class Writer:
    """A concurrent writer process inserting a notification every 10 ms."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.ready, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_write_loop, args=(url, self.stop, self.ready, self.out))
        self.worst, self.count = 0.0, 0

    def start(self) -> None:
        self.proc.start()
        self.ready.wait(120)  # it has connected and written once

    def finish(self) -> None:
        self.stop.set()
        self.worst, self.count = self.out.get(timeout=60)
        self.proc.join()


def bench_purge(rows: int, batch: int) -> None:
    from pamflow import db
    from pamflow.models import utcnow
    from pamflow.purge import RetentionSettings, archive_expired

    for label in ("pamflow archiver", "bare ctid DELETE loop"):
        name, url = _pg_db()
        try:
            engine = db.store(url)
            _fill(engine, rows)
            writer = Writer(url)
            writer.start()
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                if label.startswith("pamflow"):
                    res = archive_expired(engine, RetentionSettings(
                        archive_dir=Path(tmp), batch_size=batch), datasets=("notification",),
                        now=utcnow())
                    moved = res[0].rows
                else:
                    moved = 0
                    cutoff = utcnow() - timedelta(days=90)
                    while True:
                        with engine.begin() as c:
                            n = c.execute(sa.text(
                                "DELETE FROM notification WHERE ctid IN (SELECT ctid FROM "
                                "notification WHERE created_at < :c AND state = 'sent' LIMIT :n)"),
                                {"c": cutoff, "n": batch}).rowcount
                        moved += n
                        if n == 0:
                            break
            took = time.perf_counter() - t
            writer.finish()
            print(f"{label:24s} {moved:>10,} rows in {took:7.2f} s = {moved / took:>9,.0f} rows/s; "
                  f"writer's longest wait {writer.worst * 1000:6.1f} ms over {writer.count} inserts")
        finally:
            db.reset_engines()
            _drop(name)


def bench_seal(n: int) -> None:
    from pamflow import audit, audit_seal, db
    from pamflow.models import AuditLog, table_of, utcnow
    from pamflow.vault import Keyring, Vault

    with tempfile.TemporaryDirectory() as tmp:
        engine = db.store(f"sqlite:///{tmp}/bench.db")
        prev, at, rows = audit.GENESIS, utcnow(), []
        payloads = bytearray()
        for i in range(n):
            detail = {"i": i}
            h = audit._digest(prev, at, "bench", "thing.done", "thing", str(i), detail)
            rows.append(dict(at=at, actor="bench", action="thing.done", entity="thing",
                             entity_id=str(i), detail=detail, prev_hash=prev, hash=h))
            payloads += (prev + json.dumps({"at": at.isoformat(), "i": i})).encode()
            prev = h
        with engine.begin() as c:
            for k in range(0, n, 50_000):
                c.execute(sa.insert(table_of(AuditLog)), rows[k:k + 50_000])
        box = Vault(Keyring(active="bench", keys={"bench": hashlib.sha256(b"k").digest()}))
        t = time.perf_counter()
        made = audit_seal.seal(engine, box, block_rows=10_000)
        seal_s = time.perf_counter() - t
        from sqlmodel import Session

        with Session(engine) as s:
            keys = audit_seal.public_keys(s, box)
            t = time.perf_counter()
            check = audit_seal.verify_log(s, keys=keys)
            verify_s = time.perf_counter() - t
        assert check.intact, check.reason
        blob = Path(tmp) / "payloads.bin"
        blob.write_bytes(bytes(payloads))
        t = time.perf_counter()
        subprocess.run(["sha256sum", str(blob)], check=True, capture_output=True)
        sum_s = time.perf_counter() - t
        db.reset_engines()
    print(f"seal   {n:>10,} records in {len(made)} blocks: {seal_s:6.2f} s = {n / seal_s:>9,.0f}/s")
    print(f"verify {check.rows:>10,} records + {check.seals} seals: {verify_s:6.2f} s = "
          f"{check.rows / verify_s:>9,.0f}/s")
    print(f"sha256sum over the same {len(payloads):,} bytes: {sum_s:6.3f} s = "
          f"{n / sum_s:>9,.0f} records/s (floor)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--audit", type=int, default=1_000_000)
    ap.add_argument("--skip-purge", action="store_true")
    args = ap.parse_args()
    if not args.skip_purge:
        bench_purge(args.rows, args.batch)
    bench_seal(args.audit)


if __name__ == "__main__":
    main()
