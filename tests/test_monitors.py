"""System monitors: CPU and memory, disk space (pamflow.monitors, flows/monitors.py).

Episode and crossing rules are driven by injected sample sources; psutil is exercised for
real against a CPU burner (the window shortened by configuration) and a real tmpfs filled
to each threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlmodel import Session, col, select

from pamflow.models import AuditLog, MonitorState, Notification
from pamflow.monitors.disk import check_disks, statvfs_usage
from pamflow.monitors.settings import MonitorSettings
from pamflow.monitors.usage import PsutilUsage, UsageReading, check_usage

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class Script:
    """A sample source replaying readings: (seconds after T0, CPU % since the last one,
    memory %). The counters advance as a 2-CPU machine's would."""

    def __init__(self) -> None:
        self.busy, self.total, self.last = 1000.0, 5000.0, None

    def at(self, seconds: float, cpu: float, memory: float) -> Script:
        if self.last is not None:
            spent = 2 * (seconds - self.last)
            self.busy += spent * cpu / 100
            self.total += spent
        self.last = seconds
        self.reading = UsageReading(T0 + timedelta(seconds=seconds), self.busy, self.total, memory)
        return self

    def read(self) -> UsageReading:
        return self.reading


def notes(engine) -> list[tuple[str, str]]:
    with Session(engine) as db:
        return [(n.type, n.subject) for n in db.exec(select(Notification).order_by(col(Notification.id)))]


def audits(engine, prefix: str = "monitor.") -> list[tuple[str, str | None]]:
    with Session(engine) as db:
        rows = db.exec(select(AuditLog).order_by(col(AuditLog.id)))
        return [(a.action, a.entity_id) for a in rows if a.action.startswith(prefix)]


def levels(report) -> dict[str, tuple[str, str | None]]:
    return {m.metric: (m.level, m.alert) for m in report.metrics}


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_cpu_and_memory_alert_once_per_sustained_episode_and_say_back_to_normal(backend, request):
    store = request.getfixturevalue(backend)
    s, cfg = Script(), MonitorSettings()
    run = lambda t, cpu, mem: levels(check_usage(store, s.at(t, cpu, mem), cfg, host="pam1"))  # noqa: E731

    # first run: counters only for CPU, one memory sample: nothing is sustained yet
    assert run(0, 0, 75) == {"cpu": ("normal", None), "memory": ("normal", None)}
    # 10 minutes later (a little late): CPU averaged 80 % over them, memory stayed over 70 %
    assert run(605, 80, 76) == {"cpu": ("high", "CPU Usage - High"),
                                "memory": ("high", "Memory Usage - High")}
    # a rerun at once alerts nothing twice
    assert run(606, 80, 76) == {"cpu": ("high", None), "memory": ("high", None)}
    # the next 10 minutes at 95 %: critical, once; memory fell under 70 %: back to normal
    assert run(1210, 95, 50) == {"cpu": ("critical", "CPU Usage - Critical"),
                                 "memory": ("normal", "Memory Usage - Back to normal")}
    # still over 90: no new alert; memory over 70 for one sample only: not sustained
    assert run(1800, 93, 72) == {"cpu": ("critical", None), "memory": ("normal", None)}
    assert run(2400, 30, 40) == {"cpu": ("normal", "CPU Usage - Back to normal"),
                                 "memory": ("normal", None)}
    # a short spike (5 minutes at 100 % between idle runs) is not 10 minutes sustained
    assert run(2700, 100, 40) == {"cpu": ("normal", None), "memory": ("normal", None)}
    assert run(3000, 20, 40) == {"cpu": ("normal", None), "memory": ("normal", None)}

    assert [t for t, _ in notes(store)] == [
        "CPU Usage - High", "Memory Usage - High", "CPU Usage - Critical",
        "Memory Usage - Back to normal", "CPU Usage - Back to normal"]
    subjects = dict(notes(store))
    assert subjects["CPU Usage - High"] == "CPU usage high on pam1: 80.0 %"
    assert [a for a, _ in audits(store)] == [
        "monitor.cpu.high", "monitor.memory.high", "monitor.cpu.critical",
        "monitor.memory.normal", "monitor.cpu.normal"]
    with Session(store) as db:
        kept = db.get(MonitorState, "usage").state
        body = db.exec(select(Notification.body).where(Notification.type == "CPU Usage - Critical")).one()
    assert "over 90% usage over 10 minutes" in body
    assert len(kept["samples"]["cpu"]) <= 3  # pruned to what the next window needs


def test_critical_from_the_start_and_a_reboot_resets_the_counters(store):
    s, cfg = Script(), MonitorSettings()
    check_usage(store, s.at(0, 0, 95), cfg, host="pam1")
    assert levels(check_usage(store, s.at(600, 97, 96), cfg, host="pam1")) == {
        "cpu": ("critical", "CPU Usage - Critical"), "memory": ("critical", "Memory Usage - Critical")}
    # the machine restarted: its counters begin again from zero; no sample, no crash
    s.busy, s.total = 10.0, 20.0
    report = check_usage(store, s.at(900, 0, 96), cfg, host="pam1")
    assert levels(report)["cpu"] == ("critical", None) and report.metrics[0].newest is None
    # a gap longer than the window: memory's window is no longer covered, CPU's interval is
    report = check_usage(store, s.at(4500, 10, 96), cfg, host="pam1")
    assert levels(report) == {"cpu": ("normal", "CPU Usage - Back to normal"),
                              "memory": ("critical", None)}


def test_the_window_is_configuration(store):
    s = Script()
    cfg = MonitorSettings(window_seconds=60, tolerance_seconds=5, cpu_high=50, cpu_critical=60)
    check_usage(store, s.at(0, 0, 10), cfg, host="pam1")
    assert levels(check_usage(store, s.at(30, 55, 10), cfg, host="pam1"))["cpu"] == ("normal", None)
    assert levels(check_usage(store, s.at(61, 55, 10), cfg, host="pam1"))["cpu"] == \
        ("high", "CPU Usage - High")


@pytest.fixture
def cpu_burners():
    """One busy-looping process per CPU, killed (by pid) afterwards."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(os.cpu_count() or 1)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_real_cpu_load_is_measured_from_the_kernel_counters(store, cpu_burners):
    """psutil against a real CPU burner, the window shortened to 2 seconds by settings."""
    cfg = MonitorSettings(window_seconds=2, tolerance_seconds=0.2, cpu_high=60, cpu_critical=99.9)
    time.sleep(0.5)  # the burners are running
    first = check_usage(store, PsutilUsage(), cfg, host="pam1")
    assert first.metrics[0].newest is None and 0 < first.metrics[1].newest < 100
    time.sleep(2.5)
    second = check_usage(store, PsutilUsage(), cfg, host="pam1")
    cpu = second.metrics[0]
    assert cpu.newest is not None and cpu.newest >= 60, cpu
    assert cpu.level in ("high", "critical") and cpu.alert in ("CPU Usage - High", "CPU Usage - Critical")
    assert [t for t, _ in notes(store)] == [cpu.alert]


@pytest.fixture
def memory_hog():
    """Start a process holding ``share`` of the machine's RAM (pages written, so really
    used), and kill it (by pid) afterwards."""
    import psutil

    procs: list[subprocess.Popen] = []

    def start(share: float) -> subprocess.Popen:
        size = int(psutil.virtual_memory().total * share)
        proc = subprocess.Popen([sys.executable, "-c", f"import sys, time\nb = b'\\x01' * {size}\n"
                                 "print('ready', flush=True)\ntime.sleep(600)"],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_real_memory_hog_raises_and_ends_an_episode(store, memory_hog):
    """psutil against a real memory hog (8 % of RAM), the high line set 4 points over the
    machine's use before it and the window shortened to 2 seconds by settings. The monitor
    is run every 0.3 s until its samples cover the window (a busy machine delays runs)."""
    import psutil

    before = psutil.virtual_memory().percent
    if before > 85:
        pytest.fail(f"memory hog test: the machine already uses {before} % of RAM", pytrace=False)
    cfg = MonitorSettings(window_seconds=2, tolerance_seconds=1, memory_high=before + 4,
                          memory_critical=99.9)
    hog = memory_hog(0.08)
    seen = []
    deadline = time.monotonic() + 60
    while not any(m.alert for m in seen) and time.monotonic() < deadline:
        memory = check_usage(store, PsutilUsage(), cfg, host="pam1").metrics[1]
        assert memory.newest is not None and memory.newest >= before + 4, (before, memory)
        seen.append(memory)
        time.sleep(0.3)
    assert [(m.level, m.alert) for m in seen if m.alert] == [("high", "Memory Usage - High")]
    assert seen[-1].sustained is not None and seen[-1].sustained >= before + 4
    hog.kill()
    hog.wait()
    after = check_usage(store, PsutilUsage(), cfg, host="pam1").metrics[1]
    assert (after.level, after.alert) == ("normal", "Memory Usage - Back to normal")
    assert [t for t, _ in notes(store) if t.startswith("Memory")] == [
        "Memory Usage - High", "Memory Usage - Back to normal"]


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_disk_levels_are_notified_once_per_crossing(backend, request, tmp_path):
    store = request.getfixturevalue(backend)
    mount = tmp_path / "data"
    mount.mkdir()
    free = {"pct": 50.0}
    cfg = MonitorSettings(disk_mounts=(str(mount), str(tmp_path / "gone")))

    def usage(path: str) -> tuple[int, int]:
        return 1000, int(free["pct"] * 10)

    def run(pct: float) -> tuple[int, str | None]:
        free["pct"] = pct
        report = check_disks(store, cfg, usage=usage, host="pam1")
        gone = report.mounts[1]
        assert gone.error and "gone" in gone.error and gone.free_percent is None
        return report.mounts[0].level, report.mounts[0].alert

    assert run(50) == (0, None)
    assert run(29) == (1, "Low disk space - Low criticality")
    assert run(25) == (1, None)
    assert run(19.9) == (2, "Low disk space - Medium criticality")
    assert run(9) == (3, "Low disk space - High criticality")
    assert run(5) == (3, None)
    assert run(40) == (0, None)  # recovered: audited, not notified
    assert run(8) == (3, "Low disk space - High criticality")  # a new crossing, worst line only
    assert [t for t, _ in notes(store)] == [
        "Low disk space - Low criticality", "Low disk space - Medium criticality",
        "Low disk space - High criticality", "Low disk space - High criticality"]
    assert [a for a, _ in audits(store)] == ["monitor.disk.low_space"] * 3 + [
        "monitor.disk.recovered", "monitor.disk.low_space"]


def test_the_storage_report_goes_out_once_a_day(store, tmp_path):
    from pamflow.monitors.disk import daily_report

    cfg = MonitorSettings(disk_mounts=(str(tmp_path),))
    report = check_disks(store, cfg, usage=lambda m: (1000, 250), host="pam1")
    day = datetime(2026, 6, 1, tzinfo=UTC)
    assert not daily_report(store, report, cfg, day + timedelta(hours=7, minutes=59))
    assert daily_report(store, report, cfg, day + timedelta(hours=8, minutes=3))
    assert not daily_report(store, report, cfg, day + timedelta(hours=18))
    assert daily_report(store, report, cfg, day + timedelta(days=1, hours=9))
    assert not daily_report(store, report, MonitorSettings(disk_report_hour=None),
                            day + timedelta(days=2, hours=9))
    daily = [s for t, s in notes(store) if t == "Space disk - Daily notification"]
    assert daily == ["Storage usage on pam1, 2026-06-01: lowest 25.0 % free",
                     "Storage usage on pam1, 2026-06-02: lowest 25.0 % free"]
    with Session(store) as db:
        body = db.exec(select(Notification.body).where(
            Notification.type == "Space disk - Daily notification")).first()
    assert f"- {tmp_path}: 25.0 % free (low)" in body


@pytest.fixture
def tmpfs(tmp_path):
    """A real 8 MiB tmpfs, unmounted afterwards (the tests run as root, see scripts/test)."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "pamflow-test", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"tmpfs peer unavailable: mount failed ({done.stderr.strip()}). Fix: run the "
                    f"tests as root with mount allowed.", pytrace=False)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill_to(path: Path, free_percent: float) -> None:
    total, free = statvfs_usage(str(path))
    target = int(total * free_percent / 100)
    if free > target:
        with open(path / f"fill-{len(list(path.iterdir()))}", "wb") as fh:
            fh.write(b"\0" * (free - target))


def test_a_real_tmpfs_filled_to_each_threshold(store, tmpfs):
    cfg = MonitorSettings(disk_mounts=(str(tmpfs),))
    seen = []
    for pct in (60, 25, 15, 5):
        fill_to(tmpfs, pct)
        mount = check_disks(store, cfg).mounts[0]
        assert mount.error is None and mount.free_percent is not None
        assert mount.free_percent <= pct
        seen.append((mount.level, mount.alert))
    assert seen == [(0, None), (1, "Low disk space - Low criticality"),
                    (2, "Low disk space - Medium criticality"), (3, "Low disk space - High criticality")]
    for f in tmpfs.iterdir():
        f.unlink()
    mount = check_disks(store, cfg).mounts[0]
    assert (mount.level, mount.previous, mount.alert) == (0, 3, None)
    with Session(store) as db:
        body = db.exec(select(Notification.body).where(
            Notification.type == "Low disk space - High criticality")).one()
    assert "under 10% of free space" in body and str(tmpfs) in body


@pytest.mark.parametrize("bad, reason", [
    ({"disk_mounts": ["relative/dir"]}, "absolute path"),
    ({"disk_mounts": ["/var/../etc"]}, "absolute path"),
    ({"disk_mounts": ["/tmp/\x00x"]}, "NUL"),
    ({"disk_mounts": ["/" + "a" * 5000]}, "4096"),
    ({"cpu_high": 95}, "under the critical level"),
    ({"disk_low": 10, "disk_medium": 20}, "low > medium > high"),
    ({"smtp_relay": "mail.example.com"}, "host:port"),
    ({"smtp_relay": "evil;rm -rf /:25"}, "neither an IP address nor a host name"),
    ({"gateway_url": "file:///etc/passwd"}, "not an http(s) URL"),
    ({"gateway_url": "http://user:pw@gw:4280"}, "must not carry credentials"),
    ({"backup_pattern": "../../etc/*"}, "file-name pattern"),
    ({"listeners": [{"name": "x", "port": 70000}]}, "less than or equal to 65535"),
    ({"listeners": [{"name": "a" * 100, "port": 1}]}, "1-63 letters"),
    ({"window_seconds": -1}, "greater than 0"),
    ({"no_such_setting": 1}, "Extra inputs are not permitted"),
])
def test_bad_settings_are_refused_with_the_reason(bad, reason):
    with pytest.raises(ValidationError) as err:
        MonitorSettings.model_validate(bad)
    assert reason in str(err.value)


def test_system_monitor_flow_reads_its_block_and_publishes(store, tmpfs, prefect_server,
                                                           prefect_client_sync):
    from blocks.monitor_thresholds import MonitorThresholdsBlock
    from flows.monitors import system_monitor
    from pamflow.monitors.alarms import define

    fill_to(tmpfs, 15)
    with Session(store) as db:
        define(db, "tmpfs-full", f"disk_free_percent:{tmpfs}", "<", 50, 0, "medium", "test")
        db.commit()
    MonitorThresholdsBlock(disk_mounts=(str(tmpfs),)).save("monitor-flow-test", overwrite=True)
    state = system_monitor(settings="monitor-flow-test", return_state=True)
    assert state.is_completed()
    result = state.result()
    assert [a for a in result["alerts"] if a.startswith("Low disk")] == [
        "Low disk space - Medium criticality"]
    assert result["cpu"] in ("normal", "high", "critical") and result["errors"] == []
    assert [t for t, _ in notes(store) if t.startswith("Low disk")] == [
        "Low disk space - Medium criticality"]
    assert result["alarms"] == {"opened": ["tmpfs-full"], "closed": [], "open": 1}

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    artifacts = prefect_client_sync.read_artifacts(flow_run_filter=FlowRunFilter(
        id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_type = {a.type: a for a in artifacts}
    table = by_type["table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["monitor"] for r in rows} == {"cpu", "memory", "disk", "service"}
    assert "Low disk space - Medium criticality" in by_type["markdown"].data
    # a second run alerts nothing new (the daily report, if due, went out with the first)
    assert system_monitor(settings="monitor-flow-test")["alerts"] == []


def test_system_monitor_as_a_service_run_makes_a_pass_every_interval(store, prefect_server):
    """prefect.yaml starts system-monitor hourly with a lifetime: one run makes the 10-minute
    passes itself (here shortened: a pass every second for 2.5 s)."""
    from flows.monitors import system_monitor

    result = system_monitor(settings="monitor-service-test", lifetime_s=2.5, every_s=1)
    assert result["passes"] >= 2  # 3 on a quiet machine; a slow pass leaves room for fewer
    assert system_monitor(settings="monitor-service-test")["passes"] == 1


def test_cli_monitors_status(store, tmp_path):
    from typer.testing import CliRunner

    from pamflow.cli import app

    s = Script()
    check_usage(store, s.at(0, 0, 95), MonitorSettings(), host="pam1")
    check_usage(store, s.at(600, 95, 95), MonitorSettings(), host="pam1")
    check_disks(store, MonitorSettings(disk_mounts=(str(tmp_path),)), usage=lambda m: (100, 5))
    runner = CliRunner()
    out = runner.invoke(app, ["monitors", "status", "--json"], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [row["key"] for row in lines] == [f"disk:{tmp_path}", "usage"]
    assert lines[1]["state"] == {"episodes": {
        "cpu": {"level": "critical", "since": "2026-01-05T12:10:00+00:00", "peak": 95.0},
        "memory": {"level": "critical", "since": "2026-01-05T12:10:00+00:00", "peak": 95.0}}}
    table = runner.invoke(app, ["monitors", "status"], env={"COLUMNS": "250"})
    assert "cpu critical, memory critical" in table.output and f"disk:{tmp_path}" in table.output
    only = runner.invoke(app, ["monitors", "status", "--prefix", "disk:", "--json"])
    assert [json.loads(line)["key"] for line in only.output.splitlines()] == [f"disk:{tmp_path}"]
    for hostile in ("x" * 400, "a\x00b"):
        bad = runner.invoke(app, ["monitors", "status", "--prefix", hostile])
        assert bad.exit_code == 2 and "--prefix" in bad.output and "Traceback" not in bad.output
    assert runner.invoke(app, ["monitors", "status", "--prefix", "%_'; DROP TABLE x; --"]).exit_code == 0
