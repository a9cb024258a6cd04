"""Starting the local platform: a Prefect server on embedded SQLite, the work pool, a worker.

Used by ``pamflow up`` and by the test suite's shared Prefect server, so both start
Prefect the same way.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .errors import PamflowError

QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "true",
}
WORK_POOL = "process"
REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(api_url: str | None = None, home: Path | None = None, **extra: str) -> dict:
    """The environment for a Prefect server, worker or CLI call of pamflow's."""
    env = dict(os.environ)
    env.update(QUIET_ENV)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


# ---- API authentication of the local Prefect server ------------------------------------
# Prefect's API is the platform's control surface: whoever reaches it runs any robot with
# any parameters and edits blocks. The server `pamflow up` starts therefore requires HTTP
# basic authentication (PREFECT_SERVER_API_AUTH_STRING), with a secret generated once into
# the data directory, never into Prefect, never on a command line (environment only).
AUTH_FILE = "prefect-api-auth"
AUTH_URL_FILE = "prefect-api-url"  # the API the secret belongs to (the server `up` started)
AUTH_USER = "pamflow"


class AuthFileError(PamflowError, RuntimeError):
    """The auth file is missing, unsafe (group/other access, another owner) or unreadable."""


def read_api_auth(path: Path) -> str:
    """The auth string kept in ``path``; refused if anyone but its owner could read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise AuthFileError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise AuthFileError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise AuthFileError(f"{path} belongs to uid {info.st_uid}, not to this user "
                                f"({os.geteuid()}): refusing to use it")
        if info.st_mode & 0o077:
            raise AuthFileError(f"{path} is open to group or others (mode "
                                f"{stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`")
        value = fh.read().strip()
    if len(value) < 16 or not value.isascii() or not value.isprintable() or " " in value:
        raise AuthFileError(f"{path} does not hold a usable auth string")
    return value


def ensure_api_auth(home: Path) -> str:
    """The local server's auth string, generated once into ``home/prefect-api-auth``.

    Created 0600 and complete before it appears (written to a private temporary file, then
    hard-linked into place), so a concurrent reader never sees half a secret and two
    concurrent callers end up with the same one.
    """
    path = home / AUTH_FILE
    try:
        return read_api_auth(path)
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{AUTH_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    return read_api_auth(path)


def record_api_url(home: Path, api_url: str) -> None:
    """Remember which API the auth file is for (CLI commands send it there only)."""
    path = home / AUTH_URL_FILE
    tmp = home / f".{AUTH_URL_FILE}.{os.getpid()}"
    tmp.write_text(api_url.rstrip("/") + "\n")
    os.replace(tmp, path)


def local_api_auth(home: Path, api_url: str) -> str | None:
    """The auth string for ``api_url`` when it is the server `pamflow up` started from
    ``home``; None for any other server (pamflow's secret is never sent elsewhere)."""
    try:
        recorded = (home / AUTH_URL_FILE).read_text().strip()
    except OSError:
        return None
    if recorded != api_url.rstrip("/"):
        return None
    try:
        return read_api_auth(home / AUTH_FILE)
    except FileNotFoundError:
        return None


def auth_headers(auth: str | None) -> dict[str, str]:
    """HTTP basic authentication headers for Prefect's API (none without an auth string)."""
    if not auth:
        return {}
    import base64

    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def api_requires_auth(api_url: str) -> bool:
    """True when the server refuses an unauthenticated API call (401)."""
    resp = httpx.post(f"{api_url.rstrip('/')}/deployments/filter", json={"limit": 1}, timeout=10)
    return resp.status_code == 401


# ---- the embedded Prefect server on SQLite ------------------------------------------------
# Prefect 3.8 opens SQLite in WAL mode with ``PRAGMA busy_timeout = 60000`` and takes write
# locks with ``BEGIN IMMEDIATE`` only where it reads for update (server/database/
# configurations.py). A *deferred* transaction that read before another writer committed
# cannot wait for the lock (SQLite answers SQLITE_BUSY at once, whatever the busy timeout):
# those are the "database is locked" errors of a busy server. So the cure is fewer writers
# at once, not a longer timeout: the services that write on a short loop run less often
# (late runs 5 s -> 30 s, pause expirations 5 s -> 60 s, cancellation clean-up 20 s -> 60 s,
# foreman 15 s -> 30 s), the scheduler keeps fewer runs ahead (max 100 -> 10, at most a day
# ahead; at least 3 as Prefect's default), `pamflow up` drops the scheduled runs missed
# while it was down (``skip_missed_runs``) instead of letting them all start at once, and the
# server begins its write transactions IMMEDIATE (pamflow/prefect_server.py), so writers
# wait for the lock (busy timeout) instead of failing.
# The statement timeout matches Prefect's busy timeout (60 s). Each value stays overridable
# from the environment (a setting already set there wins).
SQLITE_SERVER_SETTINGS = {
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
    "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "60",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "30",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "30",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "10",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME": "P1D",
}


def start_server(home: Path, port: int, log_path: Path | None = None,
                 auth: str | None = None) -> subprocess.Popen:
    """A Prefect server whose database is a SQLite file under ``home``; with ``auth`` its API
    requires that basic-auth string (passed in the environment, never on the command line).
    Tuned for SQLite (``SQLITE_SERVER_SETTINGS``)."""
    home.mkdir(parents=True, exist_ok=True)
    env = prefect_env(
        home=home,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    for key, value in SQLITE_SERVER_SETTINGS.items():
        env.setdefault(key, value)
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    log = open(log_path or home / "server.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [sys.executable, "-m", "pamflow.prefect_server", "server", "start", "--host",
         "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(api_url: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    """Block until ``{api_url}/health`` answers, or raise with a clear reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {proc.returncode} before healthy")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"Prefect server at {api_url} not healthy after {timeout:.0f}s")


def run_prefect(args: list[str], api_url: str, cwd: Path | None = None, check: bool = True,
                **extra_env: str) -> subprocess.CompletedProcess:
    """Run a ``prefect`` CLI command against ``api_url``."""
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env={**prefect_env(api_url), **extra_env},
        cwd=cwd,
        check=check,
        capture_output=True,
        text=True,
    )


def ensure_work_pool(api_url: str, name: str = WORK_POOL) -> None:
    res = run_prefect(["work-pool", "inspect", name], api_url, check=False)
    if res.returncode != 0:
        run_prefect(["work-pool", "create", name, "--type", "process"], api_url)


BLOCK_MODULES = (
    "blocks.password_policy",
    "blocks.syslog_target",
    "blocks.notification_routing",
    "blocks.ldap_directory",
    "blocks.device_database",
    "blocks.cloud_accounts",
    "blocks.retention",
    "blocks.monitor_thresholds",
    "blocks.backup_target",
)


def register_blocks(api_url: str) -> None:
    """Register pamflow's block types so the UI offers them (Blocks > +)."""
    for module in BLOCK_MODULES:
        run_prefect(["block", "register", "-m", module], api_url, cwd=REPO_ROOT)


def start_worker(api_url: str, pool: str = WORK_POOL, log_path: Path | None = None,
                 query_seconds: float = 2, **extra_env: str) -> subprocess.Popen:
    """A process worker; its flow runs send pamflow's own log records to Prefect too (the
    flow run's logs in the UI show what the domain did, not only Prefect's lines)."""
    env = {**prefect_env(api_url, PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
                         PREFECT_LOGGING_EXTRA_LOGGERS="pamflow"), **extra_env}
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(0), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen | None, deadline: float = 15) -> None:
    """Stop ``proc`` and everything it started; SIGKILL what is left after ``deadline`` s.

    Processes it started in sessions of their own (a worker's flow runs) get SIGTERM
    first and up to ``deadline`` seconds to finish (an executor gives its unstarted work
    back), while the Prefect server they report to is still up; then ``proc``'s own process
    group gets SIGTERM, then SIGKILL.
    """
    if proc is None or proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    groups = set()
    for pid in tree:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    groups.discard(proc.pid)
    end = time.monotonic() + deadline
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    while groups and time.monotonic() < end and any(_alive(p) for p in tree):
        time.sleep(0.2)
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(max(1.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    for pid in tree:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def deploy_all(api_url: str, root: Path = REPO_ROOT, version: str | None = None,
               **extra_env: str) -> subprocess.CompletedProcess:
    """``prefect --no-prompt deploy --all`` from ``root``'s prefect.yaml against ``api_url``.

    ``PAMFLOW_ROOT`` (used by prefect.yaml's pull step) is set to ``root``. Prefect 3.8.8
    ignores ``--version`` together with ``--all``, so the version is set afterwards through
    the API on every deployment the file names.
    """
    env = {"PAMFLOW_ROOT": str(root), **extra_env}
    res = run_prefect(["--no-prompt", "deploy", "--all"], api_url, cwd=root, check=False, **env)
    if res.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    if version:
        set_deployment_versions(api_url, root / "prefect.yaml", version,
                                auth=extra_env.get("PREFECT_API_AUTH_STRING"))
    return res


RETRIED_STATUSES = {408, 429, 500, 502, 503, 504}


def api_call(client: httpx.Client, method: str, url: str, attempts: int = 6,
             **kwargs) -> httpx.Response:
    """One Prefect REST call, retried with backoff when the server is busy (a SQLite-backed
    server answers 503 while its database is locked; Prefect's own client retries the same
    way); raises ``httpx.HTTPStatusError`` for any other error status."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            resp = client.request(method, url, **kwargs)
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        else:
            if resp.status_code not in RETRIED_STATUSES or attempt == attempts - 1:
                return resp.raise_for_status()
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def set_deployment_versions(api_url: str, prefect_yaml: Path, version: str,
                            auth: str | None = None) -> int:
    """Set ``version`` on every deployment named in ``prefect_yaml`` (Prefect's REST API);
    returns how many."""
    import yaml

    names = {d["name"] for d in yaml.safe_load(prefect_yaml.read_text())["deployments"]}
    headers = auth_headers(auth if auth is not None else os.environ.get("PREFECT_API_AUTH_STRING"))
    updated = 0
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=30) as client:
        offset = 0
        while True:
            page = api_call(client, "POST", "/deployments/filter",
                            json={"offset": offset, "limit": 200}).json()
            for dep in page:
                if dep["name"] in names:
                    api_call(client, "PATCH", f"/deployments/{dep['id']}",
                             json={"version": version})
                    updated += 1
            if len(page) < 200:
                return updated
            offset += len(page)


TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def run_deployment(api_url: str, name: str, parameters: dict, *, auth: str | None = None,
                   timeout: float = 600, poll_s: float = 1.0,
                   on_state: Callable[[str], None] | None = None) -> dict:
    """Start a flow run of deployment ``name`` (``flow/deployment``) with ``parameters``
    through Prefect's REST API and wait for it to end; returns the flow run as the API
    gives it (``state.type`` is one of ``TERMINAL_STATES``, or the last one seen at
    ``timeout``). ``on_state(state_name)`` is called whenever the state changes."""
    headers = auth_headers(auth if auth is not None else os.environ.get("PREFECT_API_AUTH_STRING"))
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=30) as client:
        flow, _, deployment = name.partition("/")
        dep = api_call(client, "GET", f"/deployments/name/{flow}/{deployment}")
        flow_run = api_call(client, "POST", f"/deployments/{dep.json()['id']}/create_flow_run",
                            json={"parameters": parameters}).json()
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            state = flow_run.get("state") or {}
            if state.get("name") != seen and on_state is not None:
                seen = state.get("name")
                on_state(seen or "?")
            if state.get("type") in TERMINAL_STATES or time.monotonic() >= deadline:
                return flow_run
            time.sleep(poll_s)
            flow_run = api_call(client, "GET", f"/flow_runs/{flow_run['id']}").json()


def start_gateway(api_url: str, port: int, log_path: Path) -> subprocess.Popen:
    """The webhook gateway (``pamflow webhooks serve``) forwarding to ``api_url``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pamflow.cli", "webhooks", "serve",
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PREFECT_API_URL": api_url},
        stdout=open(log_path, "ab"),  # noqa: SIM115 - owned by the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


# ---- supervision ----------------------------------------------------------------------------
# `pamflow up` supervises what it starts: a process that dies is started again after a
# backoff (1 s, doubling to 30 s; back to 1 s once it has stayed up a minute), and every
# restart is logged and written to ``platform-state.json`` in the data directory, which
# `pamflow status` shows. `up` is a child subreaper (Linux), so the flow runs of a worker
# that died stay its descendants and are stopped with the platform.
STATE_FILE = "platform-state.json"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process rather than to init (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _utc_now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


class Supervised:
    """One supervised process: how to start it, its current process, its restart history."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen]) -> None:
        self.name = name
        self.start = start
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_restart_at: str | None = None
        self.started = 0.0
        self.backoff = 0.0
        self.restart_at: float | None = None

    def as_dict(self) -> dict:
        alive = self.proc is not None and self.proc.poll() is None
        return {"name": self.name, "pid": self.proc.pid if self.proc else None,
                "state": "running" if alive else "restarting", "restarts": self.restarts,
                "last_exit_code": self.last_exit, "last_restart_at": self.last_restart_at}


class Supervisor:
    """Starts processes, restarts those that die with backoff, stops them all (reverse order)."""

    MIN_BACKOFF = 1.0
    MAX_BACKOFF = 30.0
    STABLE_S = 60.0

    def __init__(self, state_path: Path | None = None,
                 log: Callable[[str], None] = lambda _msg: None) -> None:
        self.state_path = state_path
        self.log = log
        self.items: list[Supervised] = []
        self.services: dict[str, dict] = {}
        self.stopping = False
        self.next_reap = 0.0

    def add(self, name: str, start: Callable[[], subprocess.Popen]) -> Supervised:
        item = Supervised(name, start)
        item.proc = start()
        item.started = time.monotonic()
        self.items.append(item)
        self.write_state()
        return item

    def pids(self) -> set[int]:
        return {i.proc.pid for i in self.items if i.proc is not None}

    def check(self) -> list[str]:
        """Restart what died (after its backoff); returns the names restarted now."""
        restarted = []
        now = time.monotonic()
        changed = False
        for item in self.items:
            if self.stopping or item.proc is None:
                continue
            code = item.proc.poll()
            if code is None:
                continue
            if item.restart_at is None:
                stable = now - item.started >= self.STABLE_S
                item.backoff = self.MIN_BACKOFF if stable or not item.backoff else \
                    min(item.backoff * 2, self.MAX_BACKOFF)
                item.last_exit = code
                item.restart_at = now + item.backoff
                self.log(f"{item.name} exited with code {code}; restarting in "
                         f"{item.backoff:.0f}s")
                changed = True
            if now >= item.restart_at:
                try:
                    item.proc = item.start()
                except Exception as exc:  # noqa: BLE001 - retried after the next backoff
                    item.restart_at = None
                    item.started = now
                    self.log(f"{item.name} could not be started: {exc}")
                    continue
                item.started = now
                item.restart_at = None
                item.restarts += 1
                item.last_restart_at = _utc_now_iso()
                self.log(f"{item.name} restarted (pid {item.proc.pid}, restart "
                         f"#{item.restarts})")
                restarted.append(item.name)
                changed = True
        if now >= self.next_reap:  # reading /proc is not free: every 10 s is enough
            self.next_reap = now + 10.0
            self.reap_orphans()
        if changed:
            self.write_state()
        return restarted

    def reap_orphans(self) -> None:
        """Collect the exit status of re-parented descendants (never of our own children)."""
        mine = self.pids()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in mine:
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == me:
                try:
                    os.waitpid(int(entry.name), os.WNOHANG)
                except ChildProcessError:
                    pass

    def note_service(self, name: str, restarted: bool, detail: str) -> None:
        """A service robot's instance was started (``restarted``: again, the last one ended
        or died)."""
        entry = self.services.setdefault(name, {"name": name, "restarts": 0,
                                                "last_restart_at": None, "detail": ""})
        entry["detail"] = detail
        if restarted:
            entry["restarts"] += 1
            entry["last_restart_at"] = _utc_now_iso()
        self.log(f"{name}: {detail}")
        self.write_state()

    def write_state(self) -> None:
        if self.state_path is None:
            return
        import json

        state = {"pid": os.getpid(), "updated_at": _utc_now_iso(),
                 "stopping": self.stopping,
                 "processes": [i.as_dict() for i in self.items],
                 "services": list(self.services.values())}
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, self.state_path)
        except OSError as exc:  # the data directory went away: supervising goes on
            self.log(f"could not write {self.state_path}: {exc.strerror}")

    def stop_all(self, deadline: float = 20,
                 on_stopped: Callable[[str], None] = lambda _name: None) -> None:
        """Stop the flow runs left by dead workers, then every process in reverse order,
        then anything still below this process (nothing is left behind)."""
        self.stopping = True
        self.write_state()
        self._stop_orphans(deadline)
        for item in reversed(self.items):
            stop(item.proc, deadline=deadline)
            on_stopped(item.name)
        self._stop_orphans(5)
        if self.state_path is not None:
            self.state_path.unlink(missing_ok=True)

    def _stop_orphans(self, deadline: float) -> None:
        mine = self.pids()
        covered = set(mine).union(*(descendants(m) for m in mine))
        orphans = [p for p in descendants(os.getpid()) if p not in covered and _alive(p)]
        if not orphans:
            return
        groups = set()
        for pid in orphans:
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                continue
        groups.discard(os.getpgid(0))
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        end = time.monotonic() + deadline
        while time.monotonic() < end and any(_alive(p) for p in orphans):
            self.reap_orphans()
            time.sleep(0.2)
        for pid in orphans:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.reap_orphans()


def read_state(home: Path) -> dict | None:
    """What the running `pamflow up` of ``home`` supervises (None when it is not running)."""
    import json

    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 1 or not _alive(pid):
        return None
    return state


# ---- scheduled runs missed while the platform was down ------------------------------------
def _iso(when: float | None = None) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time.time() if when is None else when, UTC).isoformat()


def skip_missed_runs(api_url: str, auth: str | None = None) -> dict[str, int]:
    """Delete the auto-scheduled runs whose time passed while nobody ran them, except the
    newest one of each deployment: after downtime each scheduled robot runs once, not once
    per missed slot (Prefect's own redeploy only drops *future* auto-scheduled runs).
    Returns how many were dropped per deployment id. Runs waiting for a concurrency slot
    and runs started by hand are kept."""
    headers = auth_headers(auth if auth is not None else os.environ.get("PREFECT_API_AUTH_STRING"))
    body = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}},
                          "expected_start_time": {"before_": _iso()}},
            "sort": "EXPECTED_START_TIME_DESC", "limit": 200}
    newest: set[str] = set()
    stale: list[tuple[str, str]] = []
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=30) as client:
        offset = 0
        while True:
            page = api_call(client, "POST", "/flow_runs/filter",
                            json={**body, "offset": offset}).json()
            for run in page:
                dep = run.get("deployment_id")
                if not dep or not run.get("auto_scheduled") or \
                        (run.get("state_name") or "") not in ("Scheduled", "Late"):
                    continue
                if dep in newest:
                    stale.append((dep, run["id"]))
                else:
                    newest.add(dep)
            if len(page) < 200:
                break
            offset += len(page)
        dropped: dict[str, int] = {}
        for dep, run_id in stale:
            try:
                api_call(client, "DELETE", f"/flow_runs/{run_id}")
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404:
                    raise
                continue
            dropped[dep] = dropped.get(dep, 0) + 1
    return dropped


# ---- service robots -----------------------------------------------------------------------
SERVICE_TAG = "service"
ACTIVE_STATES = ["RUNNING", "PENDING", "SCHEDULED", "CANCELLING"]
SOON_S = 120.0


class ServiceKeeper:
    """Keeps one instance of every *service robot* (a deployment tagged ``service``, such as
    the operation executor) alive: when none is running, pending or due within two minutes,
    it starts one. Repeated starts back off (1 min doubling to 10 min) so a robot that
    crashes at once does not loop."""

    def __init__(self, api_url: str, auth: str | None,
                 note: Callable[[str, bool, str], None]) -> None:
        self.api_url = api_url.rstrip("/")
        self.headers = auth_headers(auth)
        self.note = note
        self.last_start: dict[str, float] = {}
        self.backoff: dict[str, float] = {}

    def check(self) -> list[str]:
        started = []
        with httpx.Client(base_url=self.api_url, headers=self.headers, timeout=30) as client:
            deps = api_call(client, "POST", "/deployments/filter", json={
                "deployments": {"tags": {"all_": [SERVICE_TAG]}}}).json()
            for dep in deps:
                if dep.get("paused"):
                    continue
                if self._alive(client, dep["id"]):
                    continue
                name = dep["name"]
                now = time.monotonic()
                last = self.last_start.get(name)
                if last is not None and now - last < SOON_S * 5:
                    wait = self.backoff.get(name, 60.0)
                    if now - last < wait:
                        continue
                    self.backoff[name] = min(wait * 2, 600.0)
                else:
                    self.backoff[name] = 60.0
                run = api_call(client, "POST", f"/deployments/{dep['id']}/create_flow_run",
                               json={"tags": ["started-by-up"]}).json()
                self.last_start[name] = now
                started.append(name)
                ended = self._last_end(client, dep["id"])
                died = ended in ("CRASHED", "FAILED")
                self.note(name, died, f"{'instance ended ' + ended.lower() if died else 'no instance alive'}"
                                      f"; started one (flow run {run['name']})")
        return started

    def _last_end(self, client: httpx.Client, deployment_id: str) -> str:
        runs = api_call(client, "POST", "/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
            "sort": "END_TIME_DESC", "limit": 1}).json()
        return runs[0]["state_type"] if runs else ""

    def _alive(self, client: httpx.Client, deployment_id: str) -> bool:
        runs = api_call(client, "POST", "/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ACTIVE_STATES}}}, "limit": 20}).json()
        soon = _iso(time.time() + SOON_S)
        return any(r["state_type"] != "SCHEDULED" or (r.get("expected_start_time") or "") <= soon
                   or (r.get("state_name") or "") == "AwaitingConcurrencySlot" for r in runs)
