"""CPU and memory monitor: high at 70 %, critical at 90 %, sustained over 10 minutes (003).

Usage is measured from samples kept between runs, never from one reading:

- **CPU** comes from the kernel's cumulative counters (busy and total CPU seconds). The
  counters read by the previous run and by this one give the *exact* average usage over
  the whole interval between them, however long; each interval is one sample.
- **Memory** has no cumulative counter: each run adds a point sample (used share of RAM).

A metric is *sustained* over a level when the samples of the last window (the window's
start covered, give or take ``tolerance_seconds`` of run lateness) are all at or over it.
An episode starts with one alert at the level reached (high or critical), escalates
once to critical, and ends with a "back to normal" when the newest sample falls under
the high level. The samples, the counters and the open episodes are kept in the store
under ``usage``, so a run every 10 minutes is enough and a rerun alerts nothing twice.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ..models import utcnow
from . import state as monitor_state
from .alerts import USAGE_TYPES, raise_alert, usage_message, usage_normal_message
from .settings import MonitorSettings

KEY = "usage"
LEVELS = ("normal", "high", "critical")
MAX_SAMPLES = 500


@dataclass(frozen=True)
class UsageReading:
    """One look at the machine: cumulative CPU seconds (busy, total) and memory use."""

    at: datetime
    cpu_busy_s: float
    cpu_total_s: float
    memory_percent: float


class UsageSource(Protocol):
    def read(self) -> UsageReading: ...


class PsutilUsage:
    """The machine's real counters, read with psutil (as ``psutil.cpu_percent`` computes
    busy time: everything but idle and iowait; guest time is already in user time)."""

    def read(self) -> UsageReading:
        import psutil

        times = psutil.cpu_times()
        total = sum(times)
        if sys.platform.startswith("linux"):
            total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        busy = total - times.idle - getattr(times, "iowait", 0.0)
        return UsageReading(utcnow(), busy, total, float(psutil.virtual_memory().percent))


@dataclass(frozen=True)
class MetricResult:
    metric: str
    newest: float | None  # the newest sample (CPU: the average since the previous run)
    sustained: float | None  # the lowest sample over the window, None: window not covered yet
    level: str  # the open episode's level after this run
    previous: str
    alert: str | None = None  # the notification queued by this run
    newest_since: datetime | None = None  # when the newest sample began (CPU: its interval)


@dataclass
class UsageReport:
    host: str
    metrics: list[MetricResult] = field(default_factory=list)

    @property
    def alerts(self) -> list[str]:
        return [m.alert for m in self.metrics if m.alert]


def _iso(at: datetime) -> str:
    return at.isoformat()


def _sustained(samples: list[list], now: datetime, window: float, tolerance: float) -> float | None:
    """The lowest value of the samples over the last ``window`` seconds, or None when the
    samples do not reach back to the window's start.

    An interval sample (CPU) counts when it overlaps the window by more than the
    tolerance; a point sample (memory) when it is no older than the window's start, give
    or take the tolerance. The window is covered when the oldest counted sample starts no
    later than the window's start plus the tolerance (runs start a little late).
    """
    start = now - timedelta(seconds=window)
    slack = timedelta(seconds=tolerance)
    relevant = []
    for first, last, value in samples:
        begins, ends = datetime.fromisoformat(first), datetime.fromisoformat(last)
        if (ends >= start - slack) if begins == ends else (ends > start + slack):
            relevant.append((begins, float(value)))
    if not relevant or min(b for b, _ in relevant) > start + slack:
        return None
    return min(v for _, v in relevant)


def _target(value: float | None, high: float, critical: float) -> str:
    if value is None:
        return "normal"
    return "critical" if value >= critical else "high" if value >= high else "normal"


def check_usage(engine: Engine, source: UsageSource, settings: MonitorSettings,
                host: str | None = None) -> UsageReport:
    """Add this run's samples, decide each metric's episode and raise its alerts."""
    host = host or socket.gethostname()
    reading = source.read()
    now = reading.at
    report = UsageReport(host)
    with Session(engine) as db:
        kept = monitor_state.load(db, KEY)
        samples: dict[str, list[list]] = kept.get("samples") or {"cpu": [], "memory": []}
        counters = kept.get("counters")
        if counters and reading.cpu_total_s > counters["total"] \
                and now > datetime.fromisoformat(counters["at"]):
            busy = max(0.0, reading.cpu_busy_s - counters["busy"])
            percent = min(100.0, 100.0 * busy / (reading.cpu_total_s - counters["total"]))
            samples["cpu"].append([counters["at"], _iso(now), round(percent, 3)])
        samples["memory"].append([_iso(now), _iso(now), round(reading.memory_percent, 3)])
        horizon = now - timedelta(seconds=settings.window_seconds + settings.tolerance_seconds)
        for metric, rows in samples.items():
            # keep what this and later windows may need: the samples ending after the horizon
            samples[metric] = [r for r in rows
                               if datetime.fromisoformat(r[1]) >= horizon][-MAX_SAMPLES:]
        episodes: dict = kept.get("episodes") or {}
        for metric, high, critical in (("cpu", settings.cpu_high, settings.cpu_critical),
                                       ("memory", settings.memory_high, settings.memory_critical)):
            report.metrics.append(_decide(db, metric, samples[metric], episodes, now, high,
                                          critical, settings, host))
        monitor_state.save(db, KEY, {
            "counters": {"at": _iso(now), "busy": reading.cpu_busy_s, "total": reading.cpu_total_s},
            "samples": samples,
            "episodes": episodes,
        })
        db.commit()
    return report


def _decide(db: Session, metric: str, samples: list[list], episodes: dict, now: datetime,
            high: float, critical: float, settings: MonitorSettings, host: str) -> MetricResult:
    newest = float(samples[-1][2]) if samples and samples[-1][1] == _iso(now) else None
    sustained = _sustained(samples, now, settings.window_seconds, settings.tolerance_seconds)
    episode = episodes.get(metric) or {"level": "normal"}
    previous = episode["level"]
    target = _target(sustained, high, critical)
    alert = None
    detail = {"host": host, "metric": metric, "newest_percent": newest,
              "sustained_percent": sustained, "window_seconds": settings.window_seconds}
    if previous == "normal" and target != "normal" and sustained is not None:
        episode = {"level": target, "since": _iso(now), "peak": sustained}
        alert = USAGE_TYPES[(metric, target)]
        threshold = critical if target == "critical" else high
        subject, body = usage_message(metric, target, sustained, threshold,
                                      settings.window_seconds, host)
        raise_alert(db, alert, subject, body, action=f"monitor.{metric}.{target}",
                    entity="host", entity_id=host, detail={**detail, "level": target})
    elif previous != "normal" and newest is not None and newest < high:
        alert = USAGE_TYPES[(metric, "normal")]
        subject, body = usage_normal_message(metric, newest, high, host, episode.get("since", "?"))
        raise_alert(db, alert, subject, body, action=f"monitor.{metric}.normal", entity="host",
                    entity_id=host, detail={**detail, "level": "normal",
                                            "episode_since": episode.get("since"),
                                            "episode_peak": episode.get("peak")})
        episode = {"level": "normal"}
    elif previous == "high" and target == "critical" and sustained is not None:
        alert = USAGE_TYPES[(metric, "critical")]
        subject, body = usage_message(metric, "critical", sustained, critical,
                                      settings.window_seconds, host)
        raise_alert(db, alert, subject, body, action=f"monitor.{metric}.critical", entity="host",
                    entity_id=host, detail={**detail, "level": "critical",
                                            "episode_since": episode.get("since")})
        episode = {**episode, "level": "critical", "peak": max(episode.get("peak", 0), sustained)}
    elif previous != "normal" and sustained is not None:
        episode = {**episode, "peak": max(episode.get("peak", 0), sustained)}
    episodes[metric] = episode
    since = datetime.fromisoformat(samples[-1][0]) if newest is not None else None
    return MetricResult(metric, newest, sustained, episode["level"], previous, alert, since)
