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


def start_server(home: Path, port: int, log_path: Path | None = None,
                 auth: str | None = None) -> subprocess.Popen:
    """A Prefect server whose database is a SQLite file under ``home``; with ``auth`` its API
    requires that basic-auth string (passed in the environment, never on the command line)."""
    home.mkdir(parents=True, exist_ok=True)
    env = prefect_env(
        home=home,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    log = open(log_path or home / "server.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
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


BLOCK_MODULES = ("blocks.password_policy", "blocks.backup_target")


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
