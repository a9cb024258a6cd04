"""CLI commands: ``up`` (run the platform), ``status`` and ``robots`` (the panel)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # piped or captured: do not wrap the panel at 80 columns
    console = Console(width=240)

DEFAULT_PORT = 4200
GATEWAY_PORT = 4280


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _api_healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def up(
    port: int = typer.Option(DEFAULT_PORT, help="Port of the local Prefect server."),
    gateway_port: int = typer.Option(GATEWAY_PORT, help="Port of the webhook gateway."),
    no_gateway: bool = typer.Option(False, "--no-gateway", help="Do not start the gateway."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not start a worker."),
) -> None:
    """Run the whole platform: Prefect server, work pool, every robot deployed, worker, gateway.

    With PREFECT_API_URL set to a reachable server, that server is used instead of starting
    one. Ctrl-C stops everything this command started.
    """
    from pamflow import db, platform
    from pamflow.config import data_dir
    from pamflow.vault import vault

    home = data_dir()
    os.environ.setdefault("PAMFLOW_HOME", str(home))
    os.environ.update(platform.QUIET_ENV)
    stopping = threading.Event()
    interrupted = threading.Event()  # Ctrl-C or SIGTERM: the normal way `up` ends

    def log(message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        console.print(f"[{stamp}] {message}", markup=False, highlight=False)

    platform.become_subreaper()  # flow runs of a worker that died stay below `up`
    supervisor = platform.Supervisor(home / platform.STATE_FILE, log)

    def shutdown(*_args) -> None:
        if stopping.is_set():
            return
        stopping.set()
        console.print("\n[bold]Stopping pamflow…[/bold]")
        supervisor.stop_all(deadline=20, on_stopped=lambda name: console.print(f"  stopped {name}"))

    def terminate(*_args) -> None:  # SIGTERM stops exactly as Ctrl-C does
        if not stopping.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        db.store()
        vault()
        console.print(f"store: {db.store().url.render_as_string(hide_password=True)}")

        api_url = os.environ.get("PREFECT_API_URL")
        auth_file = home / platform.AUTH_FILE
        if api_url:
            # a server the user runs: its credentials are the user's configuration
            if not _api_healthy(api_url):
                console.print(f"[red]PREFECT_API_URL={api_url} does not answer /health[/red]")
                raise typer.Exit(1)
            console.print(f"using the Prefect server at {api_url}")
            if not platform.api_requires_auth(api_url):
                console.print("[yellow]warning: that Prefect API answers unauthenticated calls: "
                              "whoever reaches it can run any robot and edit the blocks. Set "
                              "PREFECT_SERVER_API_AUTH_STRING on it (or put it behind an "
                              "authenticating proxy).[/yellow]")
        else:
            api_url = f"http://127.0.0.1:{port}/api"
            try:
                auth = platform.ensure_api_auth(home)
            except platform.AuthFileError as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(1) from None
            os.environ["PREFECT_API_AUTH_STRING"] = auth  # every client started below
            if _api_healthy(api_url):
                if not platform.api_requires_auth(api_url):
                    console.print(f"[red]a Prefect server without API authentication already "
                                  f"answers at {api_url}: stop it, or set PREFECT_API_URL to use "
                                  f"it deliberately[/red]")
                    raise typer.Exit(1)
                if not _api_accepts(api_url, auth):
                    console.print(f"[red]the Prefect server at {api_url} refuses the auth "
                                  f"string in {auth_file}[/red]")
                    raise typer.Exit(1)
                console.print(f"a Prefect server already answers at {api_url}; using it")
            else:
                console.print(f"starting Prefect server on 127.0.0.1:{port} "
                              f"(SQLite in {home / 'prefect'}; API authentication on)…")
                server = supervisor.add("prefect server", lambda: platform.start_server(
                    home / "prefect", port, auth=auth))
                platform.wait_healthy(api_url, timeout=300, proc=server.proc)
            platform.record_api_url(home, api_url)
            os.environ["PREFECT_API_URL"] = api_url

        platform.ensure_work_pool(api_url)
        platform.register_blocks(api_url)
        console.print("deploying every robot in prefect.yaml…")
        platform.deploy_all(api_url, version=_git_version())
        dropped = platform.skip_missed_runs(api_url)
        if dropped:
            console.print(f"skipped {sum(dropped.values())} scheduled run(s) missed while "
                          f"pamflow was down (each robot runs once now, not once per slot)")
        if not no_worker:
            supervisor.add("worker", lambda: platform.start_worker(
                api_url, log_path=home / "worker.log", query_seconds=WORKER_QUERY_S))
        if not no_gateway:
            supervisor.add("webhook gateway", lambda: platform.start_gateway(
                api_url, gateway_port, home / "gateway.log"))
        ui = api_url.removesuffix("/api")
        console.print(f"\n[bold green]pamflow is up.[/bold green] Prefect UI: {ui}")
        if platform.local_api_auth(home, api_url):
            console.print(f"the UI and the API ask for the auth string kept in {auth_file}")
        if not no_gateway:
            console.print(f"webhooks: http://127.0.0.1:{gateway_port}/hooks/<source>")
        console.print(f"logs: {home}/*.log — Ctrl-C stops everything.\n")
        _print_robots()
        keeper = platform.ServiceKeeper(
            api_url, os.environ.get("PREFECT_API_AUTH_STRING"), supervisor.note_service)
        threading.Thread(target=_keep_services, args=(keeper, stopping, log),
                         name="service-keeper", daemon=True).start()
        while not stopping.is_set():
            supervisor.check()
            stopping.wait(0.5)
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        shutdown()
        if interrupted.is_set():
            # everything `up` started is stopped: leave now. Threads and exit hooks of the
            # libraries used on the way (Prefect's clients and event workers, the keeper's
            # HTTP client) must not hold a stopped platform's process open.
            console.print("pamflow stopped.")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


KEEPER_INTERVAL_S = 15.0
# How often the worker asks Prefect for runs to start (Prefect's default is 10 s): the
# latency of a scheduled or event-started robot against the idle cost of polling.
WORKER_QUERY_S = 5.0


def _keep_services(keeper, stopping: threading.Event, log) -> None:
    """Every 15 s: a service robot with no live instance gets one (the executor)."""
    first = True
    while not stopping.wait(2.0 if first else KEEPER_INTERVAL_S):
        first = False
        try:
            keeper.check()
        except Exception as exc:  # noqa: BLE001 - the server may be restarting: next round
            log(f"service keeper: {exc.__class__.__name__}: {str(exc)[:200]}")


def _api_accepts(url: str, auth: str) -> bool:
    import httpx

    from pamflow import platform

    resp = httpx.post(f"{url.rstrip('/')}/deployments/filter", json={"limit": 1}, timeout=10,
                      headers=platform.auth_headers(auth))
    return resp.status_code == 200


def use_local_api_auth() -> None:
    """Give this process's Prefect clients the auth string of the server `pamflow up` started,
    when the API they will call is that server and no credentials were configured.

    Runs before every command; must run before Prefect is imported (Prefect reads its
    settings once, at import).
    """
    from pathlib import Path

    from pamflow import platform

    if os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_API_KEY"):
        return
    home = Path(os.environ.get("PAMFLOW_HOME") or Path.home() / ".pamflow").expanduser()
    api = os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/api"
    try:
        auth = platform.local_api_auth(home, api)
    except platform.AuthFileError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if auth:
        os.environ["PREFECT_API_AUTH_STRING"] = auth


def _git_version() -> str | None:
    from pamflow.platform import REPO_ROOT

    if shutil.which("git") is None:
        return None
    res = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return res.stdout.strip() or None


def _print_robots(as_json: bool = False) -> None:
    from prefect.client.orchestration import get_client

    from pamflow.cli.panel import robot_rows

    with get_client(sync_client=True) as client:
        rows = robot_rows(client)
    if as_json:
        import dataclasses
        import json

        print(json.dumps([dataclasses.asdict(r) for r in rows], default=str, indent=2))
        return
    table = Table(title="Execution processes", title_justify="left")
    for col in ("family", "robot", "schedule", "window", "events", "simult.", "status",
                "last run", "last time", "next run"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.family, r.name, r.schedule, r.window, r.triggers or "—", r.instances,
                      "[yellow]paused[/yellow]" if r.status == "paused" else "active",
                      r.last_state, _fmt_time(r.last_time), _fmt_time(r.next_run))
    console.print(table)
    if not rows:
        console.print("no robots deployed yet: run `pamflow up`")


def robots(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The execution-process panel: every robot, its schedule, instances, state and runs."""
    from pamflow.config import data_dir  # noqa: F401  (ensures data dir exists)

    api = os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/api"
    if not _api_healthy(api):
        console.print(f"[red]no Prefect API at {api}[/red]: start it with `pamflow up` "
                      "or set PREFECT_API_URL")
        raise typer.Exit(1)
    os.environ["PREFECT_API_URL"] = api
    _print_robots(as_json)


def status() -> None:
    """Health of the platform: store, Prefect API, work pool and workers, gateway."""
    import httpx

    from pamflow import db
    from pamflow.config import data_dir

    ok = True
    engine = db.store()
    console.print(f"store      {engine.url.render_as_string(hide_password=True)}  [green]ok[/green]")
    console.print(f"data dir   {data_dir()}")
    api = os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{DEFAULT_PORT}/api"
    if _api_healthy(api):
        console.print(f"prefect    {api}  [green]healthy[/green]")
        from pamflow import platform

        if os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_API_KEY"):
            console.print("api auth   on (credentials configured)")
        elif platform.api_requires_auth(api):
            console.print("api auth   [red]on, but no credentials here[/red]: set "
                          "PREFECT_API_AUTH_STRING, or run on the host of `pamflow up`")
            ok = False
        else:
            console.print("api auth   [yellow]off: whoever reaches this API runs any robot"
                          "[/yellow]")
        os.environ["PREFECT_API_URL"] = api
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            deployments = client.read_deployments()
            try:
                workers = client.read_workers_for_work_pool("process")
                online = [w for w in workers if str(w.status).upper().endswith("ONLINE")]
                console.print(f"work pool  process: {len(online)} worker(s) online")
                ok &= bool(online)
            except Exception as exc:  # noqa: BLE001 - report, do not crash the status page
                console.print(f"work pool  process: [red]{exc.__class__.__name__}[/red]")
                ok = False
            console.print(f"robots     {len(deployments)} deployed, "
                          f"{sum(d.paused for d in deployments)} paused")
    else:
        console.print(f"prefect    {api}  [red]not answering[/red]")
        ok = False
    gw = os.environ.get("PAMFLOW_GATEWAY_URL") or f"http://127.0.0.1:{GATEWAY_PORT}"
    try:
        healthy = httpx.get(f"{gw}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        healthy = False
    console.print(f"gateway    {gw}  " + ("[green]healthy[/green]" if healthy
                                          else "[yellow]not answering[/yellow]"))
    _print_supervision(data_dir())
    raise typer.Exit(0 if ok else 1)


def _print_supervision(home) -> None:
    """What `pamflow up` supervises, with its restarts (from its state file)."""
    from pamflow import platform

    state = platform.read_state(home)
    if state is None:
        console.print("supervisor `pamflow up` is not running from this data directory")
        return
    console.print(f"supervisor `pamflow up` running (pid {state['pid']})")
    for item in [*state.get("processes", []), *state.get("services", [])]:
        restarts = item.get("restarts", 0)
        parts = [item.get("state") or "service robot"]
        if item.get("pid"):
            parts[0] += f" (pid {item['pid']})"
        parts.append(f"{restarts} restart(s)")
        if item.get("last_restart_at"):
            parts.append(f"last restart {item['last_restart_at']}")
        if item.get("last_exit_code") is not None:
            parts.append(f"last exit code {item['last_exit_code']}")
        if item.get("detail"):
            parts.append(str(item["detail"]))
        colour = "yellow" if restarts else "green"
        console.print(f"  {item.get('name', '?'):<28} [{colour}]" + ", ".join(parts) + f"[/{colour}]")


def register(app: typer.Typer) -> None:
    """Add ``up``, ``status`` and ``robots`` to ``app``."""
    app.command()(up)
    app.command()(status)
    app.command()(robots)

