"""Rotation benchmark: change then verify N passwords on a local sshd.

    .venv/bin/python -m bench.rotation_bench --accounts 1000
    .venv/bin/python -m bench.rotation_bench --accounts 100

Side by side in the same run, against the same sshd (tests/peers/sshd.py):

- **ansible**: ``ansible-playbook`` (ansible-core from .venv), ``ansible.builtin.user`` with
  become (sudo) and ``forks: 16`` (one inventory host per account, all at the sshd),
  password hashed by passlib (sha512_crypt, 5,000 rounds: its "at best" setting), then
  ``ansible.builtin.ping`` as each account with its new password (ssh + sshpass, pipelining,
  ControlPersist for the admin). By default on ``min(N, 100)`` accounts (it is slow);
  ``--ansible-accounts`` changes that. Its rate is per account either way.
- **bare-per-connection**: a plain paramiko script, 16 threads, per account one admin
  connection running ``sudo -n chpasswd`` and one login as the account.
- **bare-reused**: one admin connection for all the changes (``chpasswd`` with 100 lines per
  call), then 16 threads logging in as each account.
- **pamflow**: a fresh store (SQLite in a temp dir), the device and N credentials created,
  N change operations enqueued (``pamflow.operations.queue.enqueue_many``) and run by
  ``pamflow.operations.executor.drain()`` - the write-ahead protocol, which verifies each new secret
  by logging in before promoting it. Afterwards (not timed) every account is checked to log
  in with its stored, decrypted secret.

Figures per scenario: wall time, rotations/s, controller CPU (getrusage of this process
and of its reaped children, i.e. ansible and its ssh processes), and the sshd's own CPU
(the listener and its reaped per-connection children: PAM, password hashing, sudo,
chpasswd) - sshd runs on the same cores - and "others CPU s", what the rest of the machine
burnt meanwhile (/proc/stat): other test runs slow every scenario, so read rates with it.
``--profile`` adds a run of pamflow with a no-op target under cProfile in every thread:
pamflow's own CPU per rotation, and where it goes.

Needs root (real Linux accounts, a sudoers drop-in of its own, removed afterwards), Debian
``openssh-server``, ``sudo`` and ``sshpass`` (Ansible's password logins).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
CHPASSWD = "/usr/sbin/chpasswd"
WORKERS = 16
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.M)


# ----------------------------------------------------------------------------- measuring
def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of ``pid`` in seconds (0 when unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat): to see others' load."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Result:
    name: str
    accounts: int
    wall: float = 0.0
    cpu_self: float = 0.0
    cpu_children: float = 0.0
    sshd_cpu: float = 0.0
    machine_busy: float = 0.0
    ok: int = 0
    failed: int = 0
    note: str = ""
    phases: dict = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.cpu_self + self.cpu_children

    @property
    def others(self) -> float:
        """CPU seconds spent by other processes on the machine meanwhile (other tests...)."""
        return max(0.0, self.machine_busy - self.cpu - self.sshd_cpu)

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall else 0.0

    def per(self, seconds: float) -> float:
        return 1000 * seconds / self.accounts if self.accounts else 0.0


class Meter:
    """Wall, controller CPU (self + reaped children) and sshd CPU over a block."""

    def __init__(self, result: Result, sshd_pid: int) -> None:
        self.result, self.sshd_pid = result, sshd_pid

    def __enter__(self) -> Meter:
        self.cpu0 = _cpu()
        self.sshd0 = _proc_cpu(self.sshd_pid)
        self.busy0 = _machine_busy()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.result.wall += time.perf_counter() - self.t0
        c1 = _cpu()
        self.result.cpu_self += c1[0] - self.cpu0[0]
        self.result.cpu_children += c1[1] - self.cpu0[1]
        self.result.sshd_cpu += _proc_cpu(self.sshd_pid) - self.sshd0
        self.result.machine_busy += _machine_busy() - self.busy0


def _password() -> str:
    return "Pf-" + secrets.token_urlsafe(15)


def _login(paramiko, port: int, username: str, password: str) -> bool:
    """One password login with SSHClient (the bare script's way); True/False."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", port, username, password, timeout=30, banner_timeout=30,
                       auth_timeout=30, look_for_keys=False, allow_agent=False)
        return True
    except paramiko.AuthenticationException:
        return False
    finally:
        client.close()


def _chpasswd(client, lines: dict[str, str]) -> int:
    chan = client.get_transport().open_session()
    try:
        chan.exec_command(f"sudo -n {CHPASSWD}")
        chan.sendall("".join(f"{u}:{p}\n" for u, p in lines.items()).encode())
        chan.shutdown_write()
        return chan.recv_exit_status()
    finally:
        chan.close()


def _admin_client(paramiko, port: int, admin: str, password: str):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port, admin, password, timeout=30, banner_timeout=30,
                   auth_timeout=30, look_for_keys=False, allow_agent=False)
    return client


# ----------------------------------------------------------------------------- bare paramiko
def bare_per_connection(sshd, admin: tuple[str, str], current: dict[str, str]) -> Result:
    import paramiko

    res = Result("bare paramiko, 16 threads, 1 connection per change", len(current))
    new = {u: _password() for u in current}

    def rotate(user: str) -> bool:
        client = _admin_client(paramiko, sshd.port, *admin)
        try:
            if _chpasswd(client, {user: new[user]}) != 0:
                return False
        finally:
            client.close()
        return _login(paramiko, sshd.port, user, new[user])

    with Meter(res, sshd.proc.pid), ThreadPoolExecutor(WORKERS) as pool:
        outcome = list(pool.map(rotate, current))
    res.ok, res.failed = sum(outcome), len(outcome) - sum(outcome)
    current.update(new)
    return res


def bare_reused(sshd, admin: tuple[str, str], current: dict[str, str]) -> Result:
    import paramiko

    res = Result("bare paramiko, 1 admin connection + 16 verifying threads", len(current))
    new = {u: _password() for u in current}
    users = list(current)
    changed: set[str] = set()
    with Meter(res, sshd.proc.pid):
        t0 = time.perf_counter()
        client = _admin_client(paramiko, sshd.port, *admin)
        try:
            for i in range(0, len(users), 100):
                chunk = {u: new[u] for u in users[i:i + 100]}
                if _chpasswd(client, chunk) == 0:
                    changed.update(chunk)
        finally:
            client.close()
        res.phases["change"] = time.perf_counter() - t0
        with ThreadPoolExecutor(WORKERS) as pool:
            outcome = list(pool.map(lambda u: u in changed and
                                    _login(paramiko, sshd.port, u, new[u]), users))
        res.phases["verify"] = time.perf_counter() - t0 - res.phases["change"]
    res.ok, res.failed = sum(outcome), len(outcome) - sum(outcome)
    current.update(new)
    return res


# ----------------------------------------------------------------------------- ansible
def ansible(sshd, admin: tuple[str, str], current: dict[str, str], workdir: Path) -> Result:
    from passlib.hash import sha512_crypt

    res = Result("ansible-playbook, user+become, forks 16, then ping", len(current))
    if shutil.which("sshpass") is None:
        res.note = "sshpass missing (apt-get install sshpass)"
        return res
    new = {u: _password() for u in current}
    inv = workdir / "inventory.json"
    cp_dir = workdir / "cp"
    cp_dir.mkdir(exist_ok=True)
    env = {**os.environ, "ANSIBLE_CONFIG": str(HERE / "ansible" / "ansible.cfg"),
           "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default", "ANSIBLE_LOCAL_TEMP": str(workdir),
           "ANSIBLE_DISPLAY_OK_HOSTS": "False", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "False",
           "ANSIBLE_HOME": str(workdir / "home"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp_dir),
           "ANSIBLE_FORKS": str(WORKERS), "ANSIBLE_DEPRECATION_WARNINGS": "False"}
    common = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null " \
             "-o PreferredAuthentications=password -o PubkeyAuthentication=no"
    stats: Counter = Counter()
    with Meter(res, sshd.proc.pid):
        t0 = time.perf_counter()
        hashes = {u: sha512_crypt.using(rounds=5000).hash(p) for u, p in new.items()}
        res.phases["hash"] = time.perf_counter() - t0
        base = {"ansible_host": "127.0.0.1", "ansible_port": sshd.port}
        inventory = {"all": {"vars": base, "children": {
            "change": {"hosts": {f"c-{u}": {"ansible_user": admin[0], "ansible_password": admin[1],
                                            "target_user": u, "new_hash": hashes[u]}
                                 for u in new}},
            "verify": {"hosts": {f"v-{u}": {"ansible_user": u, "ansible_password": p}
                                 for u, p in new.items()}},
        }}}
        inv.write_text(json.dumps(inventory))
        for play, ssh_args in (("change", f"-o ControlMaster=auto -o ControlPersist=20s {common}"),
                               ("verify", f"-o ControlMaster=no {common}")):
            p0 = time.perf_counter()
            out = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv),
                                  str(HERE / "ansible" / f"{play}.yml")],
                                 env={**env, "ANSIBLE_SSH_ARGS": ssh_args},
                                 capture_output=True, text=True)
            res.phases[play] = time.perf_counter() - p0
            recap = RECAP.findall(out.stdout)
            for host, ok, unreachable, failed in recap:
                bad = int(unreachable) or int(failed) or not int(ok)
                stats[(play, "bad" if bad else "ok")] += 1
                if bad and play == "change":
                    new.pop(host[2:], None)
            if len(recap) != len(new) or out.returncode:
                res.note += f"ansible {play}: rc {out.returncode}, {len(recap)} hosts in the " \
                            f"recap; {(out.stdout + out.stderr)[-400:]!r} "
    res.ok = stats[("verify", "ok")] if stats[("change", "bad")] == 0 else \
        min(stats[("verify", "ok")], stats[("change", "ok")])
    res.failed = len(current) - res.ok
    current.update(new)
    return res


# ----------------------------------------------------------------------------- pamflow
def pamflow_setup(sshd, admin: tuple[str, str], current: dict[str, str]):
    """A fresh store with the device, its admin and N credentials (not timed)."""
    from sqlmodel import Session

    from pamflow import db
    from pamflow.models import Credential, Device
    from pamflow.vault import credential_aad, vault

    db.reset_engines()
    engine = db.store()
    v = vault()
    with Session(engine) as s:
        dev = Device(name="bench-sshd", address="127.0.0.1", platform="linux", ports=[sshd.port],
                     change_protocol="ssh")
        s.add(dev)
        s.commit()
        s.refresh(dev)
        adm = Credential(device_id=dev.id, username=admin[0], auto_change=False)
        s.add(adm)
        s.flush()
        adm.secret = v.encrypt(admin[1], credential_aad(adm.id, dev.id, "secret"))
        s.add(adm)
        s.commit()
        s.refresh(adm)
        dev.admin_credential_id = adm.id
        s.add(dev)
        creds = [Credential(device_id=dev.id, username=u) for u in current]
        s.add_all(creds)
        s.flush()
        for c in creds:  # sealed to their row: ids first
            c.secret = v.encrypt(current[c.username], credential_aad(c.id, dev.id, "secret"))
        s.add_all(creds)
        s.commit()
        ids = [c.id for c in creds]
    return engine, ids


def pamflow_run(sshd, engine, cred_ids: list[int]) -> Result:
    from pamflow.operations import executor
    from pamflow.operations import queue as opqueue

    res = Result("pamflow: enqueue + executor.drain (write-ahead, verified)", len(cred_ids))
    with Meter(res, sshd.proc.pid):
        t0 = time.perf_counter()
        opqueue.enqueue_many(engine, [{"kind": "change", "credential_id": i} for i in cred_ids],
                             requested_by="bench", emit=False)
        res.phases["enqueue"] = time.perf_counter() - t0
        summary = executor.drain(engine, batch_size=100, workers=WORKERS)
        res.phases["drain"] = time.perf_counter() - t0 - res.phases["enqueue"]
    res.ok, res.failed = summary.get("succeeded", 0), len(cred_ids) - summary.get("succeeded", 0)
    res.note = f"drain: {summary.get('batches')} batches, {summary.get('failed')} failed"
    return res


def pamflow_confirm(sshd, engine, cred_ids: list[int]) -> tuple[int, int, Counter]:
    """Every account logs in with its stored (decrypted) secret; statuses counted."""
    from sqlmodel import Session, select

    from pamflow.models import Credential
    from pamflow.targets.base import Endpoint, Login
    from pamflow.targets.ssh import MemoryHostKeys, SSHTarget
    from pamflow.vault import credential_aad, vault

    with Session(engine) as s:
        creds = s.exec(select(Credential).where(Credential.id.in_(cred_ids))).all()
    statuses = Counter(c.status for c in creds)
    v = vault()
    target = SSHTarget(host_keys=MemoryHostKeys())
    ep = Endpoint(0, "confirm", "127.0.0.1", sshd.port)
    with ThreadPoolExecutor(WORKERS) as pool:
        ok = list(pool.map(lambda c: target.verify(ep, Login(c.username, v.decrypt(
            c.secret, credential_aad(c.id, c.device_id, "secret"))), 30), creds))
    return sum(ok), len(ok) - sum(ok), statuses


class NullTarget:
    """A target that takes every change and every login instantly (profiling only)."""

    protocol = "ssh"

    def apply(self, endpoint, changes, admin, timeout):
        from pamflow.targets.base import ChangeResult

        return [ChangeResult(c.username) for c in changes]

    def verify(self, endpoint, login, timeout):
        return True


def pamflow_overhead(engine, cred_ids: list[int], profile: Path) -> Result:
    """pamflow's own cost per rotation: the same drain with a target that does nothing."""
    import cProfile
    import pstats

    from pamflow.operations import executor
    from pamflow.operations import queue as opqueue
    from pamflow.targets import register_target

    register_target("ssh", lambda engine: NullTarget())
    res = Result("pamflow with a no-op target (its own overhead)", len(cred_ids))
    profs: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(*_):  # first profile event of each new thread: profile it with cProfile
        prof = cProfile.Profile()
        with lock:
            profs.append(prof)
        prof.enable()

    try:
        with Meter(res, os.getpid()):
            opqueue.enqueue_many(engine, [{"kind": "change", "credential_id": i} for i in cred_ids],
                                 requested_by="bench", emit=False)
            threading.setprofile(start_in_thread)
            main = cProfile.Profile()
            try:
                summary = main.runcall(executor.drain, engine, batch_size=100, workers=WORKERS)
            finally:
                threading.setprofile(None)
    finally:
        from pamflow.targets.ssh import SSHTarget

        register_target("ssh", lambda engine: SSHTarget(engine))
    main.create_stats()
    for prof in profs:
        prof.create_stats()
    pstats.Stats(main, *profs).dump_stats(str(profile))
    res.ok = summary.get("succeeded", 0)
    res.failed = len(cred_ids) - res.ok
    res.sshd_cpu = 0.0
    res.note = "cProfile on in every thread (slows it)"
    return res


# ----------------------------------------------------------------------------- main
def _table(results: list[Result], bare: Result | None) -> str:
    head = (f"{'scenario':58} {'accts':>5} {'ok':>5} {'wall s':>8} {'rot/s':>7} "
            f"{'ctl CPU s':>9} {'ctl ms/rot':>10} {'sshd ms/rot':>11} {'others CPU s':>12}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.name[:58]:58} {r.accounts:5d} {r.ok:5d} {r.wall:8.1f} {r.rate:7.2f} "
                     f"{r.cpu:9.2f} {r.per(r.cpu):10.2f} {r.per(r.sshd_cpu):11.1f} "
                     f"{r.others:12.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--ansible-accounts", type=int, default=None,
                    help="accounts for the Ansible run (default: min(accounts, 100))")
    ap.add_argument("--skip", action="append", default=[],
                    choices=["ansible", "bare", "pamflow"], help="leave a scenario out")
    ap.add_argument("--profile", action="store_true",
                    help="also run pamflow with a no-op target under cProfile: its own cost")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="pamflow-rotation-bench-"))
    os.environ.update({
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PAMFLOW_HOME": str(workdir / "home"),
        "PAMFLOW_DATABASE_URL": f"sqlite:///{workdir / 'pamflow.db'}",
        "PAMFLOW_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "PAMFLOW_EMIT_EVENTS": "0",
    })
    os.environ.pop("PREFECT_API_URL", None)
    sys.path.insert(0, str(ROOT))
    from tests.peers.sshd import SSHD

    n = args.accounts
    n_ansible = min(n, 100) if args.ansible_accounts is None else args.ansible_accounts
    tag = secrets.token_hex(2)
    sudoers = Path(f"/etc/sudoers.d/pamflow-rotation-bench-{tag}")
    print(f"rotation benchmark: {n} accounts (ansible: {n_ansible}) on a local sshd; "
          f"{os.cpu_count()} cores shared by controller and sshd", flush=True)
    sshd = SSHD.start(max_startups=400)
    results: list[Result] = []
    bare: Result | None = None
    try:
        t0 = time.perf_counter()
        admin_pw = _password()
        admin = (sshd.add_account(admin_pw, name=f"pfba{tag}"), admin_pw)
        accounts = {f"pfb{tag}{i:05d}": _password() for i in range(n)}
        ansible_accounts = {f"pfa{tag}{i:05d}": _password() for i in range(n_ansible)} \
            if "ansible" not in args.skip else {}
        sshd.add_accounts({**accounts, **ansible_accounts})
        # our own sudoers file (SSHD.stop() would remove the tests' shared one); ansible's
        # become runs python as root, so it needs a general rule, not only chpasswd
        sudoers.write_text(f"{admin[0]} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        print(f"set-up: {len(accounts) + len(ansible_accounts)} accounts in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)

        if "bare" not in args.skip:
            for fn in (bare_per_connection, bare_reused):
                r = fn(sshd, admin, accounts)
                results.append(r)
                bare = r if bare is None or r.per(r.cpu) < bare.per(bare.cpu) else bare
                print(f"  {r.name}: {r.ok}/{r.accounts} in {r.wall:.1f}s "
                      f"{r.phases or ''}", flush=True)
        if "pamflow" not in args.skip:
            engine, ids = pamflow_setup(sshd, admin, accounts)
            r = pamflow_run(sshd, engine, ids)
            ok, bad, statuses = pamflow_confirm(sshd, engine, ids)
            r.note += f"; confirm: {ok} log in with the stored secret, {bad} do not; " \
                      f"statuses {dict(statuses)}"
            results.append(r)
            print(f"  {r.name}: {r.ok}/{r.accounts} in {r.wall:.1f}s {r.note}", flush=True)
            if args.profile:
                import pstats

                prof = workdir / "pamflow.prof"
                r = pamflow_overhead(engine, ids, prof)
                results.append(r)
                stats = pstats.Stats(str(prof))
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(40)
        if ansible_accounts:
            r = ansible(sshd, admin, ansible_accounts, workdir)
            results.append(r)
            print(f"  {r.name}: {r.ok}/{r.accounts} in {r.wall:.1f}s "
                  f"{ {k: round(v, 1) for k, v in r.phases.items()} } {r.note}", flush=True)
    finally:
        sudoers.unlink(missing_ok=True)
        sshd.stop()
        from pamflow import db

        db.reset_engines()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(_table(results, bare))
    for r in results:
        if r.note:
            print(f"note [{r.name.split(',')[0]}]: {r.note}")
    print("others CPU s: CPU used meanwhile by the rest of the machine (other test runs): "
          f"a busy machine slows every scenario. Load average now: "
          f"{Path('/proc/loadavg').read_text().split()[:3]}")
    pam = next((r for r in results if r.name.startswith("pamflow")), None)
    ans = next((r for r in results if r.name.startswith("ansible")), None)
    if pam:
        print()
        print(f"pamflow {pam.rate:.2f} rotations/s (target >= 10): "
              f"{'MET' if pam.rate >= 10 else 'MISSED'}")
        if ans and ans.rate:
            print(f"pamflow / ansible = {pam.rate / ans.rate:.1f}x (target >= 5x; ansible over "
                  f"{ans.accounts} accounts): {'MET' if pam.rate >= 5 * ans.rate else 'MISSED'}")
        if bare:
            ratio = pam.per(pam.cpu) / bare.per(bare.cpu) if bare.cpu else float("inf")
            print(f"pamflow controller CPU per rotation = {ratio:.2f}x the bare script's "
                  f"({bare.name}) (target <= 2x): {'MET' if ratio <= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
