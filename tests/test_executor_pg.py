"""Several executor processes on PostgreSQL: every operation runs exactly once.

The 2,000-operation run uses a recording handler (the peer under test is PostgreSQL's
``FOR UPDATE SKIP LOCKED`` and the partial unique index, not the target); a smaller batch
of real password changes on the real sshd goes through two processes too.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from pamflow.models import Device
from pamflow.operations import queue
from tests.test_rotation import (
    add_credential,
    logins,
    make_device,
    nasty,
    operations,
    secret_of,
    set_policy,
)

ROOT = Path(__file__).resolve().parents[1]

PROBE_SCRIPT = r"""
import json, sys, time
import sqlalchemy as sa
from sqlmodel import Session
from pamflow.operations import executor, queue
start_at = float(sys.argv[1])

def probe(ctx, ops):
    # record each execution and close the operations in the same transaction
    with Session(ctx.engine) as db:
        db.execute(sa.text("INSERT INTO probe_run (operation_id, owner) VALUES (:i, :o)"),
                   [{"i": op.id, "o": ctx.owner} for op in ops])
        for op in ops:
            row = queue.held(db, op.id, ctx.owner)
            queue.mark_succeeded(db, row, {"probe": True})
        db.commit()
    time.sleep(0.005)

executor.register_handler("discovery", probe)
while time.time() < start_at:
    time.sleep(0.01)
print(json.dumps(executor.drain(kinds=["discovery"], batch_size=int(sys.argv[2])).as_dict()))
"""


def _env(engine) -> dict:
    return {**os.environ, "PAMFLOW_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "PAMFLOW_EMIT_EVENTS": "0"}


def test_three_processes_2000_operations_each_exactly_once(pg_store):
    with pg_store.begin() as conn:
        conn.execute(sa.text("CREATE TABLE probe_run (operation_id int NOT NULL, owner text NOT NULL)"))
    with Session(pg_store, expire_on_commit=False) as db:
        dev = Device(name="probe", address="10.9.9.9")
        db.add(dev)
        db.commit()
    queue.enqueue_many(pg_store, [{"kind": "discovery", "device_id": dev.id} for _ in range(2000)],
                       emit=False)
    start_at = time.time() + 4
    procs = [subprocess.Popen([sys.executable, "-c", PROBE_SCRIPT, str(start_at), "25"], cwd=ROOT,
                              env=_env(pg_store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))

    with pg_store.connect() as conn:
        runs = conn.execute(sa.text("SELECT operation_id, count(*) FROM probe_run "
                                    "GROUP BY operation_id")).all()
        owners = conn.execute(sa.text("SELECT count(DISTINCT owner) FROM probe_run")).scalar_one()
        states = dict(conn.execute(sa.text("SELECT state, count(*) FROM operation GROUP BY state")).all())
        attempts = conn.execute(sa.text("SELECT max(attempts) FROM operation")).scalar_one()
    assert len(runs) == 2000 and all(n == 1 for _i, n in runs)  # each ran exactly once
    assert states == {"succeeded": 2000} and attempts == 1
    assert sum(o["claimed"] for o in outs) == 2000
    assert owners >= 2  # the processes really competed for the queue


# The real executor (`python -m pamflow.operations.executor drain`), whose first batch waits until
# the other process holds leases too: both processes are then known to take part, however
# the machine schedules their start-up. Everything after the wait is the real rotation.
BOTH_SCRIPT = r"""
import sys, time
import sqlalchemy as sa
from pamflow.operations import executor

change = executor.HANDLERS["change"]
waited = []

def change_once_both_hold_leases(ctx, ops):
    deadline = time.monotonic() + 120
    while not waited and time.monotonic() < deadline:
        with ctx.engine.connect() as conn:
            owners = conn.execute(sa.text("SELECT count(DISTINCT lease_owner) FROM operation "
                                          "WHERE lease_owner IS NOT NULL")).scalar_one()
        if owners >= 2:
            break
        time.sleep(0.05)
    waited.append(True)
    change(ctx, ops)

executor.register_handler("change", change_once_both_hold_leases)
sys.exit(executor._main(["drain"]))
"""


def test_two_processes_rotate_real_accounts(pg_store, sshd):
    set_policy(pg_store)
    dev, _ = make_device(pg_store, sshd)
    creds = []
    for i in range(16):
        pw = nasty(f"pg{i}")
        cred = add_credential(pg_store, dev, sshd.add_account(pw), pw, policy="nasty")
        creds.append((cred, pw))
        queue.enqueue(pg_store, "change", cred.id, emit=False)
    env = {**_env(pg_store), "PAMFLOW_BATCH_SIZE": "4"}
    procs = [subprocess.Popen([sys.executable, "-c", BOTH_SCRIPT], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        summaries.append(ast.literal_eval(out.strip().splitlines()[-1]))  # drain's summary
    # both processes claimed operations and completed every one they claimed
    assert len({s["owner"] for s in summaries}) == 2
    for s in summaries:
        assert s["claimed"] > 0 and s["succeeded"] == s["claimed"] and s["failed"] == 0, summaries
    assert sum(s["claimed"] for s in summaries) == 16
    ops = operations(pg_store)
    assert all(o.state == "succeeded" and o.attempts == 1 for o in ops)
    news = [(c.username, secret_of(pg_store, c.id)) for c, _ in creds]
    assert logins(sshd.port, news) == [True] * 16
    assert logins(sshd.port, [(c.username, pw) for c, pw in creds]) == [False] * 16
