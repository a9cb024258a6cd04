"""Services and listeners: the states of seed 002, Appendix I.

A **TCP listener** (a configured port on this machine) is in ``LISTEN`` while a socket
listens on it; otherwise it takes the state of the liveliest socket still bound to that
local port (``ESTABLISHED``, ``SYN-RECEIVED``, ``CLOSE-WAIT``, ``LAST-ACK``, ``FIN-WAIT-1``,
``FIN-WAIT-2``, ``CLOSING``, ``TIME-WAIT``, ``SYN-SENT``), and ``CLOSED`` when there is none.
A **service** (a part of the platform: Prefect server, worker, gateway, database, SMTP
relay) is ``ACTIVE`` (operating), ``INACTIVE`` (not operating) or ``DISABLED`` (not
enabled: not configured, or paused).

Each state is kept in the store (``listener:<name>``, ``service:<name>``); a change is
recorded in the audit log and notified once ("Listener state changed", "Service state
changed"). The first look notifies only a state that is not the healthy one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

from . import state as monitor_state
from .alerts import raise_alert
from .settings import Listener

TCP_STATES = ("LISTEN", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2",
              "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT", "CLOSED")
SERVICE_STATES = ("ACTIVE", "INACTIVE", "DISABLED")

# psutil's (and the kernel's) names -> Appendix I's
_FROM_KERNEL = {
    "LISTEN": "LISTEN", "SYN_SENT": "SYN-SENT", "SYN_RECV": "SYN-RECEIVED",
    "ESTABLISHED": "ESTABLISHED", "FIN_WAIT1": "FIN-WAIT-1", "FIN_WAIT2": "FIN-WAIT-2",
    "CLOSE_WAIT": "CLOSE-WAIT", "CLOSING": "CLOSING", "LAST_ACK": "LAST-ACK",
    "TIME_WAIT": "TIME-WAIT", "CLOSE": "CLOSED", "NONE": "CLOSED",
}
# when nothing listens: the state of the liveliest socket left on the port
_PRECEDENCE = ("ESTABLISHED", "SYN-RECEIVED", "CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1",
               "FIN-WAIT-2", "CLOSING", "TIME-WAIT", "SYN-SENT")

Socket = tuple[str, int, str]  # local address, local port, kernel state (psutil's name)


def tcp_sockets() -> list[Socket]:
    """Every TCP socket of this machine (IPv4 and IPv6), from the kernel via psutil."""
    import psutil

    return [(c.laddr.ip, c.laddr.port, c.status) for c in psutil.net_connections(kind="tcp")
            if c.laddr]


def _same_address(bound: str, wanted: str) -> bool:
    if wanted == "*":
        return True
    try:
        b = ipaddress.ip_address(bound.split("%")[0])
    except ValueError:
        return False
    if b.is_unspecified:
        return True
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    try:
        return b == ipaddress.ip_address(wanted)
    except ValueError:  # a host name: resolved once here
        try:
            return str(b) in {info[4][0] for info in socket.getaddrinfo(wanted, None)}
        except OSError:
            return False


def listener_state(listener: Listener, sockets: Iterable[Socket]) -> str:
    """The Appendix I state of ``listener`` among ``sockets``."""
    seen = {_FROM_KERNEL.get(status, "CLOSED") for address, port, status in sockets
            if port == listener.port and _same_address(address, listener.host)}
    if "LISTEN" in seen:
        return "LISTEN"
    return next((s for s in _PRECEDENCE if s in seen), "CLOSED")


@dataclass(frozen=True)
class ServiceCheck:
    """A service's state and why (an error, "paused", "not configured", a version)."""

    state: str
    detail: str = ""


ServiceProbe = Callable[[], ServiceCheck]


@dataclass(frozen=True)
class StateResult:
    kind: str  # listener | service
    name: str
    state: str
    previous: str | None
    detail: str = ""
    alert: str | None = None


@dataclass
class ListenersReport:
    results: list[StateResult] = field(default_factory=list)

    @property
    def alerts(self) -> list[str]:
        return [f"{r.alert}: {r.kind} {r.name} {r.previous or 'unknown'} -> {r.state}"
                for r in self.results if r.alert]


def _message(kind: str, name: str, previous: str | None, state: str, detail: str,
             host: str) -> tuple[str, str]:
    was = f"was {previous}" if previous else "first look"
    why = f" ({detail})" if detail else ""
    return (f"{kind.capitalize()} {name} on {host} is {state}",
            f"The {kind} {name} on {host} is {state}{why}; it {was}." if previous else
            f"The {kind} {name} on {host} is {state}{why} ({was}).")


def _record(db: Session, kind: str, name: str, state: str, detail: str, healthy: str,
            host: str) -> StateResult:
    key = f"{kind}:{name}"
    previous = monitor_state.load(db, key).get("state")
    alert = None
    if state != previous:
        if previous is not None or state != healthy:
            alert = f"{kind.capitalize()} state changed"
            subject, body = _message(kind, name, previous, state, detail, host)
            raise_alert(db, alert, subject, body, action=f"monitor.{kind}.state", entity=kind,
                        entity_id=name, detail={"host": host, "name": name, "state": state,
                                                "previous": previous, "detail": detail[:300]})
        monitor_state.save(db, key, {"state": state, "detail": detail[:300]})
    return StateResult(kind, name, state, previous, detail, alert)


def check_listeners_and_services(engine: Engine, listeners: Iterable[Listener],
                                 services: dict[str, ServiceProbe],
                                 sockets: Callable[[], list[Socket]] = tcp_sockets,
                                 host: str | None = None) -> ListenersReport:
    """Look at every listener and service, keep their states, alert on each change."""
    host = host or socket.gethostname()
    listeners = list(listeners)
    seen = sockets() if listeners else []
    looked: list[tuple[str, str, str, str, str]] = []
    for listener in listeners:
        looked.append(("listener", listener.name, listener_state(listener, seen),
                       f"port {listener.port}" + ("" if listener.host == "*" else f" on {listener.host}"),
                       "LISTEN"))
    for name, probe in services.items():
        try:
            check = probe()
        except Exception as exc:  # noqa: BLE001 - a probe that fails says the service is down
            check = ServiceCheck("INACTIVE", f"{type(exc).__name__}: {str(exc)[:200]}")
        looked.append(("service", name, check.state, check.detail, "ACTIVE"))
    report = ListenersReport()
    with Session(engine) as db:
        for kind, name, state, detail, healthy in looked:
            report.results.append(_record(db, kind, name, state, detail, healthy, host))
        db.commit()
    return report


# ---- probes of the platform's own parts that need no Prefect --------------------------

def http_health(url: str, timeout: float = 5.0) -> ServiceCheck:
    """ACTIVE when ``url`` answers 2xx (TLS verified for https)."""
    import httpx

    try:
        answer = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return ServiceCheck("INACTIVE", f"{type(exc).__name__}: {str(exc)[:200]}")
    if answer.is_success:
        return ServiceCheck("ACTIVE", f"HTTP {answer.status_code}")
    return ServiceCheck("INACTIVE", f"HTTP {answer.status_code}")


def smtp_banner(relay: str | None, timeout: float = 5.0) -> ServiceCheck:
    """ACTIVE when the relay (``host:port``) greets with 220; DISABLED when none is set."""
    if not relay:
        return ServiceCheck("DISABLED", "no SMTP relay configured")
    host, _, port = relay.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            greeting = conn.recv(512).decode("ascii", "replace")
            conn.sendall(b"QUIT\r\n")
    except OSError as exc:
        return ServiceCheck("INACTIVE", f"{relay}: {exc.strerror or type(exc).__name__}")
    if greeting.startswith("220"):
        return ServiceCheck("ACTIVE", f"{relay} greets 220")
    return ServiceCheck("INACTIVE", f"{relay} greets {greeting[:3]!r}, not 220")


def database_alive(engine: Engine) -> ServiceCheck:
    """ACTIVE when the store answers a query."""
    import sqlalchemy as sa

    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return ServiceCheck("INACTIVE", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return ServiceCheck("ACTIVE", engine.dialect.name)
