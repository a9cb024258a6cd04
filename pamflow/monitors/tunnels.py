"""Tunnel heartbeat check (tunnelheartbeatcheckjob): "marks vpn tunnels as failed if there
is no heartbeat record in the interval" (the connector heartbeat check interval).

Each configured connector (a host and port reached through an SSH tunnel or a relay) is
probed: its endpoint accepting a TCP connection is a heartbeat, recorded in the store
(``connector:<name>``). A connector without a heartbeat for longer than its
``heartbeat_interval_seconds`` is marked failed ("Tunnel failed", audited, once); its next
heartbeat marks it ok again (audited, "Tunnel restored"). A connector never seen is
"unknown" until its first interval has passed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from . import state as monitor_state
from .alerts import raise_alert
from .settings import Connector

FAILED = "Tunnel failed"
RESTORED = "Tunnel restored"

Probe = Callable[[Connector], str | None]  # None: a heartbeat; else why not


def tcp_heartbeat(connector: Connector, timeout: float = 5.0) -> str | None:
    """A heartbeat when the connector's endpoint accepts a TCP connection."""
    try:
        with socket.create_connection((connector.host, connector.port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class TunnelResult:
    name: str
    state: str  # ok | failed | unknown
    previous: str | None
    last_heartbeat: str | None
    detail: str = ""
    alert: str | None = None


@dataclass
class TunnelsReport:
    results: list[TunnelResult] = field(default_factory=list)

    @property
    def alerts(self) -> list[str]:
        return [f"{r.alert}: {r.name}" for r in self.results if r.alert]


def check_tunnels(engine: Engine, connectors: tuple[Connector, ...], now: datetime,
                  probe: Probe = tcp_heartbeat, host: str | None = None) -> TunnelsReport:
    host = host or socket.gethostname()
    report = TunnelsReport()
    answers = {c.name: probe(c) for c in connectors}
    with Session(engine) as db:
        for c in connectors:
            key = f"connector:{c.name}"
            kept = monitor_state.load(db, key)
            previous = kept.get("state")
            first_seen = kept.get("first_seen") or now.isoformat()
            last = kept.get("last_heartbeat")
            why = answers[c.name]
            if why is None:
                last = now.isoformat()
            since = datetime.fromisoformat(last or first_seen)
            if why is None:
                state = "ok"
            elif now - since > timedelta(seconds=c.heartbeat_interval_seconds):
                state = "failed"
            else:
                state = previous or "unknown"
            detail = {"host": host, "connector": c.name, "endpoint": f"{c.host}:{c.port}",
                      "via": c.via, "last_heartbeat": last, "reason": why}
            alert = None
            if state == "failed" and previous != "failed":
                alert = FAILED
                raise_alert(db, FAILED, f"Tunnel {c.name} failed on {host}",
                            f"The {c.via} tunnel of connector {c.name} ({c.host}:{c.port}) has had "
                            f"no heartbeat since {last or 'it was configured'} (more than "
                            f"{c.heartbeat_interval_seconds:g} s): {why}.",
                            action="monitor.tunnel.failed", entity="connector", entity_id=c.name,
                            detail=detail)
            elif state == "ok" and previous == "failed":
                alert = RESTORED
                raise_alert(db, RESTORED, f"Tunnel {c.name} restored on {host}",
                            f"The {c.via} tunnel of connector {c.name} ({c.host}:{c.port}) "
                            "answers again.", action="monitor.tunnel.restored",
                            entity="connector", entity_id=c.name, detail=detail)
            monitor_state.save(db, key, {"state": state, "last_heartbeat": last,
                                         "first_seen": first_seen, "detail": why or ""})
            report.results.append(TunnelResult(c.name, state, previous, last, why or "", alert))
        db.commit()
    return report
