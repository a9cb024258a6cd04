"""Email sender throughput: pamflow against a bare ``smtplib`` loop, same run, same server.

Target: pamflow's sender at least 0.8× the bare loop's messages per second.

An aiosmtpd server (its own process, STARTTLS under a test CA, counting what it accepts)
receives, in turn:

* **pamflow** — ``--messages`` notifications queued (``notifications.queue``: template
  rendered, repeat-window check, one row each; timed separately), then the sender: routing
  into messages (``plan``), and ``deliver`` — claim with a lease, MIME built per message,
  one SMTP connection for the whole run, each message marked sent in its own commit;
* **bare loop** — the same messages, MIME pre-built before the clock starts, sent with
  ``smtplib.sendmail`` over one connection (STARTTLS too), nothing recorded;
* **one connection per message** — the bare loop again, connecting (and STARTTLS) for each
  of ``--per-connection`` messages.

Each notification goes to its own recipient, so storm control does not fold them into one
message. The store is SQLite (WAL) in a temporary directory unless ``--pg``.

    .venv/bin/python -m bench.notifications_bench [--messages 10000] [--per-connection 1000] [--pg]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SERVER = textwrap.dedent("""
    import asyncio, signal, ssl, sys
    from aiosmtpd.controller import Controller
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    class Count:
        n = 0
        async def handle_DATA(self, server, session, envelope):
            Count.n += 1
            return "250 OK"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    c = Controller(Count(), hostname="127.0.0.1", port=port, tls_context=ctx,
                   require_starttls=True, server_hostname="127.0.0.1")
    c.start()
    print("ready", flush=True)
    for line in sys.stdin:
        print(Count.n, flush=True)
    c.stop()
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--per-connection", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--pg", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pamflow-notify-bench-"))
    os.environ.setdefault("PAMFLOW_HOME", str(work / "home"))
    os.environ["PAMFLOW_EMIT_EVENTS"] = "0"
    os.environ.pop("PREFECT_API_URL", None)
    if args.pg:
        from tests.fixtures.stores import create_pg_database

        os.environ["PAMFLOW_DATABASE_URL"] = (
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{create_pg_database()}")
    else:
        os.environ["PAMFLOW_DATABASE_URL"] = f"sqlite:///{work / 'pamflow.db'}"

    from sqlmodel import Session, col, select

    from pamflow import db, notifications
    from pamflow.models import NotificationMessage
    from pamflow.notifications.channels import (
        OutMessage,
        SmtpChannel,
        SmtpSettings,
        build_email,
        tls_context,
    )
    from pamflow.notifications.sender import SenderSettings, deliver, plan
    from pamflow.notifications.templates import sample
    from pamflow.platform import free_port
    from tests.fixtures.smtpd import make_ca

    ca = make_ca(work / "ca")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(ca.cert_file),
                               str(ca.key_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None and server.stdin is not None
    assert server.stdout.readline().strip() == "ready"

    def received() -> int:
        server.stdin.write("?\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    engine = db.store()
    n = args.messages
    base = sample("Lost of connectivity")

    t0 = time.perf_counter()
    with Session(engine) as s:
        for i in range(n):
            notifications.queue(s, "Lost of connectivity",
                                context={**base, "device": f"dev{i:05d}", "device_id": i},
                                recipients=[f"user{i:05d}@example.test"])
            if i % 1000 == 999:
                s.commit()
        s.commit()
    queued_s = time.perf_counter() - t0

    settings = SmtpSettings("127.0.0.1", port, "starttls", "pamflow@example.test",
                            ca_file=str(ca.ca_file))
    t1 = time.perf_counter()
    planned = plan(engine, settings=SenderSettings(plan_limit=n))
    planned_s = time.perf_counter() - t1
    assert planned.messages == n

    # the bare loop sends the very messages pamflow sends, MIME built before its clock starts
    with Session(engine) as s:
        rows = s.exec(select(NotificationMessage).order_by(col(NotificationMessage.id))).all()
        out = [OutMessage(r.id, r.message_id, r.tenant, r.channel, r.recipient, r.type, r.severity,
                          r.subject, r.text, r.html, r.created_at) for r in rows]
    prebuilt = [(m.recipient, build_email(m, settings.from_address)) for m in out]
    ctx = tls_context(str(ca.ca_file))

    # interleaved rounds (the machine's load changes over minutes): pamflow sends a round's
    # messages from the store, then the bare loop the same number, each on its one connection
    channel = SmtpChannel(settings)
    bare = smtplib.SMTP("127.0.0.1", port)
    bare.starttls(context=ctx)
    sender = SenderSettings(batch_size=args.batch, lease_s=3600)
    pamflow_s = bare_s = 0.0
    sent = connections = 0
    per_round = max(args.batch, n // args.rounds)
    done_bare = 0
    while sent < n or done_bare < n:
        before = received()
        t = time.perf_counter()
        report = deliver(engine, lambda name: channel, sender, owner="bench",
                         max_batches=max(1, per_round // args.batch))
        pamflow_s += time.perf_counter() - t
        assert received() - before == report.sent
        sent += report.sent
        before = received()
        t = time.perf_counter()
        for rcpt, data in prebuilt[done_bare:done_bare + report.sent]:
            bare.sendmail(settings.from_address, [rcpt], data)
        bare_s += time.perf_counter() - t
        if os.environ.get("BENCH_VERBOSE"):
            print(f"round: {report.sent} messages, pamflow total {pamflow_s:.2f} s, bare total "
                  f"{bare_s:.2f} s", flush=True)
        assert received() - before == report.sent
        done_bare += report.sent
        if report.sent == 0:
            break
    channel.close()
    bare.quit()
    connections = channel.connections
    assert sent == n == done_bare, (sent, done_bare)

    k = min(args.per_connection, n)
    before = received()
    t3 = time.perf_counter()
    for rcpt, data in prebuilt[:k]:
        one = smtplib.SMTP("127.0.0.1", port)
        one.starttls(context=ctx)
        one.sendmail(settings.from_address, [rcpt], data)
        one.quit()
    per_conn_s = time.perf_counter() - t3
    assert received() - before == k

    server.stdin.close()
    server.wait(10)
    store = "PostgreSQL" if args.pg else "SQLite"
    print(f"messages: {n}, store: {store}, batch: {args.batch}, STARTTLS on every connection")
    print(f"pamflow queue (render + repeat check + insert): {queued_s:.2f} s "
          f"({n / queued_s:.0f} notifications/s)")
    pamflow_s += planned_s
    print(f"pamflow sender (plan {planned_s:.2f} s + deliver, {connections} connection(s), "
          f"{args.rounds} interleaved rounds): {pamflow_s:.2f} s = {n / pamflow_s:.0f} msg/s")
    print(f"bare smtplib loop, one connection, MIME pre-built: {bare_s:.2f} s = {n / bare_s:.0f} msg/s")
    print(f"bare smtplib, one connection per message ({k} messages): {per_conn_s:.2f} s = "
          f"{k / per_conn_s:.0f} msg/s")
    print(f"pamflow sender / bare loop: {bare_s / pamflow_s:.2f}x  (target >= 0.8x)")
    print(f"pamflow queue + sender / bare loop: {bare_s / (pamflow_s + queued_s):.2f}x")


if __name__ == "__main__":
    main()
