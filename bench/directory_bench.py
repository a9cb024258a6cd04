"""LDAP/AD synchronization against a real slapd, beside ``ldapsearch`` dumping the same
entries in the same run.

    .venv/bin/python -m bench.directory_bench [--users 100000] [--changes 1000] [--pg]

Loads the users with ``slapadd`` (slapd stopped, then started again), then measures:
``ldapsearch`` (paged, the same attributes) dumping them; pamflow's full sync (read, then
write to a fresh store); and, after ``--changes`` modifications, an incremental sync.
Targets (issue 10): 100,000 users fully synced in ≤ 20 s and ≤ 3× ldapsearch; an
incremental run after 1,000 changes in ≤ 2 s.
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

os.environ.setdefault("PAMFLOW_HOME", tempfile.mkdtemp(prefix="pamflow-bench-dir-"))
os.environ.setdefault("PAMFLOW_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())


def _ldif(slapd, n: int) -> str:
    """``n`` inetOrgPerson users (slapadd adds entryUUID and the timestamps)."""
    return "\n".join(f"dn: uid=user{i:06d},ou=people,{slapd.suffix}\nobjectClass: inetOrgPerson\n"
                     f"uid: user{i:06d}\ncn: User {i}\nsn: {i}\nmail: user{i:06d}@corp.test\n"
                     for i in range(n))


def _reload(slapd, n: int) -> None:
    """Stop slapd, slapadd ``n`` users, start it again on the same ports."""
    from tests.peers.slapd import SLAPD, _wait_port

    slapd.proc.terminate()
    slapd.proc.wait(10)
    data = slapd.workdir / "users.ldif"
    data.write_text(_ldif(slapd, n))
    subprocess.run(["/usr/sbin/slapadd", "-q", "-f", str(slapd.workdir / "slapd.conf"),
                    "-l", str(data)], check=True)
    log = slapd.workdir / "slapd.log"
    slapd.proc = subprocess.Popen(
        [SLAPD, "-d", "0", "-f", str(slapd.workdir / "slapd.conf"), "-h",
         f"ldap://127.0.0.1:{slapd.port}/ ldaps://127.0.0.1:{slapd.tls_port}/"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    _wait_port(slapd.port, slapd.proc, log)


def _ldapsearch(slapd) -> tuple[float, int]:
    pw = slapd.workdir / "pw"
    pw.write_text(slapd.root_password)
    pw.chmod(0o600)
    start = time.perf_counter()
    out = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", slapd.url, "-D", slapd.root_dn,
                          "-y", str(pw), "-E", "pr=500/noprompt", "-b", slapd.people_dn,
                          "(objectClass=inetOrgPerson)", "uid", "mail", "cn", "entryUUID",
                          "modifyTimestamp"], check=True, capture_output=True)
    return time.perf_counter() - start, out.stdout.count(b"\ndn: ") + out.stdout.startswith(b"dn: ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--pg", action="store_true", help="the store on PostgreSQL")
    parser.add_argument("--no-departures", action="store_true",
                        help="incremental runs without the listing of ids in scope")
    args = parser.parse_args()

    from pamflow import db
    from pamflow.directory import DirectorySettings, apply_read, compile_access, read_directory
    from tests.peers.slapd import Slapd

    slapd = Slapd.start()
    pg_name = None
    try:
        _reload(slapd, args.users)
        if args.pg:
            from tests.fixtures.stores import create_pg_database

            pg_name = create_pg_database()
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"
        else:
            url = f"sqlite:///{Path(os.environ['PAMFLOW_HOME']) / 'bench.db'}"
        engine = db.store(url)
        st = DirectorySettings(name="bench", url=slapd.url, tls="none", bind_dn=slapd.root_dn,
                               bind_secret_device="-", user_base=slapd.people_dn,
                               page_size=1000, clock_skew_seconds=0,
                               departures_every_run=not args.no_departures).check()
        peer, dumped = _ldapsearch(slapd)

        def run(full: bool) -> tuple[float, float, object]:
            t0 = time.perf_counter()
            read = read_directory(engine, st, slapd.root_password, full=full)
            t1 = time.perf_counter()
            result = apply_read(engine, read, "bench", compile_access=lambda e, ids: compile_access(
                e, ids).changed)
            return t1 - t0, time.perf_counter() - t1, result

        time.sleep(1.1)  # the load's last second is over: the full run's mark is settled
        r_full, w_full, full = run(True)
        time.sleep(1.1)
        pw = slapd.workdir / "pw"
        mods = slapd.workdir / "mods.ldif"
        mods.write_text("".join(f"dn: uid=user{i:06d},ou=people,{slapd.suffix}\nchangetype: modify\n"
                                f"replace: mail\nmail: changed{i}@corp.test\n\n"
                                for i in range(0, args.users, max(1, args.users // args.changes))
                                ))
        subprocess.run(["ldapmodify", "-x", "-H", slapd.url, "-D", slapd.root_dn, "-y", str(pw),
                        "-f", str(mods)], check=True, capture_output=True)
        r_inc, w_inc, inc = run(False)
        print(f"users: {args.users} (store: {'PostgreSQL' if args.pg else 'SQLite'})")
        print("| what | seconds |\n|---|---|")
        print(f"| peer: ldapsearch, paged 500, {dumped} entries | {peer:.2f} |")
        print(f"| pamflow full sync: read / write / total | {r_full:.2f} / {w_full:.2f} / "
              f"{r_full + w_full:.2f} ({(r_full + w_full) / peer:.1f}× ldapsearch) |")
        print(f"| pamflow incremental after {args.changes} changes: read / write / total | "
              f"{r_inc:.2f} / {w_inc:.2f} / {r_inc + w_inc:.2f} |")
        print(f"full: {full.summary()}")  # type: ignore[attr-defined]
        print(f"incremental: {inc.summary()}")  # type: ignore[attr-defined]
    finally:
        slapd.stop()
        db.reset_engines()
        if pg_name:
            from tests.fixtures.stores import drop_pg_database

            drop_pg_database(pg_name)


if __name__ == "__main__":
    main()
