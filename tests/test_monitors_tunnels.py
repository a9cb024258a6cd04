"""Tunnel heartbeat check: a connector's endpoint on loopback (a real socket) answering,
then silent past its interval (failed, once), then answering again (restored)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlmodel import Session, col, select

from pamflow.models import AuditLog, Notification
from pamflow.monitors.settings import Connector, MonitorSettings
from pamflow.monitors.tunnels import check_tunnels
from pamflow.platform import free_port

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


def test_a_silent_tunnel_fails_once_past_its_interval_and_is_restored(store):
    port = free_port()
    relay = Connector(name="dc-east", host="127.0.0.1", port=port, via="ssh",
                      heartbeat_interval_seconds=600)
    never = Connector(name="dc-west", host="127.0.0.1", port=free_port(), via="relay",
                      heartbeat_interval_seconds=600)
    both = (relay, never)

    def at(minutes: float) -> dict[str, tuple[str, str | None]]:
        report = check_tunnels(store, both, T0 + timedelta(minutes=minutes), host="pam1")
        return {r.name: (r.state, r.alert) for r in report.results}

    server = listen(port)
    assert at(0) == {"dc-east": ("ok", None), "dc-west": ("unknown", None)}
    server.close()
    assert at(5) == {"dc-east": ("ok", None), "dc-west": ("unknown", None)}  # within the interval
    assert at(11) == {"dc-east": ("failed", "Tunnel failed"), "dc-west": ("failed", "Tunnel failed")}
    assert at(21) == {"dc-east": ("failed", None), "dc-west": ("failed", None)}
    server = listen(port)
    try:
        assert at(22) == {"dc-east": ("ok", "Tunnel restored"), "dc-west": ("failed", None)}
    finally:
        server.close()
    with Session(store) as db:
        subjects = db.exec(select(Notification.subject).order_by(col(Notification.id))).all()
        body = db.exec(select(Notification.body)
                       .where(Notification.subject == "Tunnel dc-east failed on pam1")).one()
        actions = db.exec(select(AuditLog.action).order_by(col(AuditLog.id))).all()
    assert subjects == ["Tunnel dc-east failed on pam1", "Tunnel dc-west failed on pam1",
                        "Tunnel dc-east restored on pam1"]
    assert "no heartbeat since 2026-05-01T09:00:00+00:00 (more than 600 s)" in body
    assert actions == ["monitor.tunnel.failed", "monitor.tunnel.failed", "monitor.tunnel.restored"]


@pytest.mark.parametrize("connector, reason", [
    ({"name": "x", "host": "evil;rm -rf /", "port": 22}, "neither an IP address nor a host name"),
    ({"name": "x", "host": "gw", "port": 0}, "greater than or equal to 1"),
    ({"name": "x", "host": "gw", "port": 22, "via": "vpn"}, "'ssh' or 'relay'"),
    ({"name": "../x", "host": "gw", "port": 22}, "1-63 letters"),
    ({"name": "x", "host": "gw", "port": 22, "heartbeat_interval_seconds": 0}, "greater than 0"),
])
def test_bad_connectors_are_refused(connector, reason):
    with pytest.raises(ValidationError) as err:
        MonitorSettings.model_validate({"connectors": [connector]})
    assert reason in str(err.value)


def test_connector_names_are_unique():
    one = {"name": "x", "host": "gw", "port": 22}
    with pytest.raises(ValidationError, match="connector names must be unique"):
        MonitorSettings.model_validate({"connectors": [one, one]})
