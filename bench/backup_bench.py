"""Backup benchmark: Credentials backup and restore of 100,000 credentials with history,
against ``pg_dump`` / ``pg_restore`` of the same tables, in the same run, on PostgreSQL.

    .venv/bin/python -m bench.backup_bench [--credentials 100000] [--history 1]

pamflow's export decrypts every secret with the vault and seals the stream to the backup
key; its restore authenticates the whole file first, then writes in one transaction,
sealing every secret again under the target store's vault. ``pg_dump -Fc --data-only`` of
device, credential and credential_history and ``pg_restore --data-only --single-transaction``
into an empty migrated database are the peer (they copy ciphertexts as they are).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--credentials", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=1)
    parser.add_argument("--per-device", type=int, default=100)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="pamflow-backup-bench-"))
    os.environ.update({"PAMFLOW_HOME": str(home), "PAMFLOW_BACKUP_DIR": str(home / "backups"),
                       "PAMFLOW_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
                       "PAMFLOW_EMIT_EVENTS": "0"})
    import sqlalchemy as sa

    from pamflow import db
    from pamflow.backup import BackupKey, create_backup, restore_backup
    from pamflow.models import Credential, CredentialHistory, Device, table_of
    from pamflow.vault import Keyring, Vault, credential_aad
    from tests.fixtures.stores import create_pg_database, drop_pg_database

    box = Vault(Keyring.load())
    names = [create_pg_database() for _ in range(3)]
    urls = [f"postgresql+psycopg://postgres@127.0.0.1:5432/{n}" for n in names]
    try:
        source, target, peer = (db.store(u) for u in urls)
        n, per = args.credentials, args.per_device
        devices = [{"id": d + 1, "name": f"srv-{d:06d}", "address": f"10.{d >> 16 & 255}."
                    f"{d >> 8 & 255}.{d & 255}", "ports": [22], "settings": {}}
                   for d in range((n + per - 1) // per)]
        started = time.perf_counter()
        with source.begin() as conn:
            conn.execute(table_of(Device).insert(), devices)
            for first in range(0, n, 10_000):
                creds, hist = [], []
                for i in range(first, min(n, first + 10_000)):
                    cid, did = i + 1, i // per + 1
                    creds.append({"id": cid, "device_id": did, "username": f"user{i % per}",
                                  "secret": box.encrypt(secrets.token_urlsafe(18),
                                                        credential_aad(cid, did, "secret")),
                                  "secret_version": args.history})
                    for v in range(args.history):
                        hist.append({"id": i * args.history + v + 1, "credential_id": cid,
                                     "version": v, "secret": box.encrypt(
                                         secrets.token_urlsafe(18),
                                         credential_aad(cid, did, "history"))})
                conn.execute(table_of(Credential).insert(), creds)
                if hist:
                    conn.execute(table_of(CredentialHistory).insert(), hist)
        print(f"populated {n} credentials, {n * args.history} history rows, {len(devices)} "
              f"devices in {time.perf_counter() - started:.1f} s")

        key = BackupKey.generate()
        t0 = time.perf_counter()
        made = create_backup(source, "credentials", box, [key.recipient])
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        restore_backup(target, made.name, key, Vault(Keyring.from_env_value(
            base64.b64encode(secrets.token_bytes(32)).decode())))
        restore_s = time.perf_counter() - t0

        dump = home / "peer.dump"
        tables = [a for t in ("device", "credential", "credential_history") for a in ("-t", t)]
        t0 = time.perf_counter()
        subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-Fc", "--data-only",
                        *tables, "-f", str(dump), names[0]], check=True)
        dump_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["pg_restore", "-h", "127.0.0.1", "-U", "postgres", "--data-only",
                        "--single-transaction", "--disable-triggers", "-d", names[2],
                        str(dump)], check=True)
        pg_restore_s = time.perf_counter() - t0
        with peer.connect() as conn:
            copied = conn.execute(sa.text("SELECT COUNT(*) FROM credential")).scalar()
        with target.connect() as conn:
            restored = conn.execute(sa.text("SELECT COUNT(*) FROM credential")).scalar()
        assert copied == restored == n

        print(f"\n| what ({n:,} credentials, {n * args.history:,} history) | seconds | file |")
        print("|---|---|---|")
        print(f"| pamflow Credentials backup (decrypt, seal to backup key) | {export_s:.2f} "
              f"| {made.size / 1e6:.1f} MB |")
        print(f"| pamflow restore into an empty store (verify, then one transaction, re-seal) "
              f"| {restore_s:.2f} | |")
        print(f"| peer: pg_dump -Fc --data-only (3 tables) | {dump_s:.2f} | "
              f"{dump.stat().st_size / 1e6:.1f} MB |")
        print(f"| peer: pg_restore --data-only --single-transaction | {pg_restore_s:.2f} | |")
    finally:
        db.reset_engines()
        for name in names:
            drop_pg_database(name)


if __name__ == "__main__":
    main()
