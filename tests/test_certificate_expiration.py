"""Certificate expiration: a real TLS listener on 127.0.0.1 serving a CA-signed certificate
that expires in 7 days triggers the 7-day alert once, not again on the next run; store
certificates get their threshold; unreadable ports are named and lose nothing else."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pamflow import audit
from pamflow.alerts.certificates import (
    alert_expiring_certificates,
    days_left,
    read_served_certificate,
    scan_served_certificates,
    threshold_reached,
)
from pamflow.models import Certificate, CertificateAlert, Device, Notification, utcnow


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def make_chain(workdir: Path, expires_in: dt.timedelta) -> tuple[Path, Path]:
    """A CA ("pamflow Test CA") and a leaf for 127.0.0.1 it signs, expiring in
    ``expires_in``: (leaf cert PEM, leaf key PEM)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pamflow"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "pamflow Test CA")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.pamflow.test")])
    leaf = (x509.CertificateBuilder().subject_name(leaf_name).issuer_name(ca_name)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + expires_in)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = workdir / "leaf.pem", workdir / "leaf-key.pem"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class TlsListener:
    """A TLS server on 127.0.0.1 that completes handshakes and closes."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    tls.recv(1)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


class Garbage:
    """A plain TCP port that answers a TLS hello with junk."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.sendall(b"HTTP/1.0 400 nope\r\n\r\n" + b"\x00" * 100)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


@pytest.fixture
def seven_days(tmp_path):
    cert, key = make_chain(tmp_path, dt.timedelta(days=7))
    listener = TlsListener(cert, key)
    yield listener
    listener.close()


def add_device(engine, name: str, tls_ports: list[int], tenant: str = "default",
               address: str = "127.0.0.1") -> int:
    with Session(engine) as db:
        dev = Device(name=name, address=address, tenant=tenant, ports=tls_ports,
                     settings={"tls_ports": tls_ports})
        db.add(dev)
        db.commit()
        return dev.id or 0


def notes(engine, prefix="Certificate expiration") -> list[Notification]:
    with Session(engine) as db:
        return [n for n in db.exec(select(Notification)) if n.type.startswith(prefix)]


# ------------------------------------------------------------------------------ units
def test_days_left_and_thresholds():
    now = dt.datetime(2026, 11, 29, 23, 59, tzinfo=dt.UTC)
    assert days_left(now + dt.timedelta(minutes=2), now) == 1  # tomorrow, 00:01
    assert days_left(now.replace(hour=0), now) == 0
    assert days_left(now - dt.timedelta(days=3), now) == -3
    assert [threshold_reached(d) for d in (120, 90, 61, 45, 8, 7, 2, 1, 0, -5)] == [
        None, 90, 90, 60, 15, 7, 7, 1, 0, 0]


def test_the_served_certificate_is_read_untrusted_with_its_issuer(seven_days):
    served = read_served_certificate("127.0.0.1", seven_days.port)
    assert served.common_name == "web.pamflow.test"
    assert "CN=pamflow Test CA" in served.issuer and not served.self_signed
    assert days_left(served.not_after, utcnow()) == 7
    assert len(served.fingerprint) == 64


# ------------------------------------------------------------------------------ the robot
def test_seven_day_certificate_is_alerted_once_by_the_flow(store, prefect_server,
                                                           prefect_client_sync, seven_days):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.alerts import certificate_expiration

    garbage = Garbage()
    try:
        add_device(store, "web", [seven_days.port])
        add_device(store, "junk", [garbage.port], address="localhost")
        state = certificate_expiration(return_state=True)
        assert state.is_completed()
        assert state.result() == {"ports": 2, "unreadable": 1, "alerts": 1}
        again = certificate_expiration()
        assert again == {"ports": 2, "unreadable": 1, "alerts": 0}
    finally:
        garbage.close()

    sent = notes(store)
    assert [n.type for n in sent] == ["Certificate expiration alert: 7 days"]
    assert "web.pamflow.test on web:" in sent[0].body and "pamflow Test CA" in sent[0].body
    with Session(store) as db:
        cert = db.exec(select(Certificate).where(Certificate.source == "served")).one()
        assert cert.alerts_sent == [7] and cert.port == seven_days.port
        assert "pamflow Test CA" in (cert.issuer or "")
        marks = db.exec(select(CertificateAlert)).all()
        assert [(m.certificate_id, m.threshold_days, m.days_left) for m in marks] == [
            (cert.id, 7, 7)]
        assert audit.check_chain(db).intact
        assert len(audit.entries(db, action="certificate.expiration_alert")) == 1

    run_id = state.state_details.flow_run_id
    artifacts = prefect_client_sync.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    tables = {a.key: a.data for a in artifacts if a.type == "table"}
    assert [float(a.data) for a in artifacts if a.type == "progress"] == [100.0]
    ports = tables["certificate-expiration-ports"]
    ports = json.loads(ports) if isinstance(ports, str) else ports
    assert sorted(bool(r["error"]) for r in ports) == [False, True]
    bad = next(r for r in ports if r["error"])
    assert bad["device"] == "junk" and "TLS handshake failed" in bad["error"]


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_store_certificates_get_their_tightest_threshold_once(backend, request):
    engine = request.getfixturevalue(backend)
    now = utcnow()
    with Session(engine) as db:
        for cn, delta, tenant in (("in-45", 45, "default"), ("in-200", 200, "default"),
                                  ("gone", -1, "default"), ("other-tenant", 45, "acme"),
                                  ("in-3", 3, "default")):
            db.add(Certificate(common_name=cn, not_after=now + dt.timedelta(days=delta),
                               tenant=tenant, issuer="CN=Corp CA"))
        db.commit()
    made = alert_expiring_certificates(engine, now)
    assert sorted((a.common_name, a.threshold) for a in made) == [
        ("gone", 0), ("in-3", 7), ("in-45", 60), ("other-tenant", 60)]
    kinds = sorted((n.type, n.context["tenant"], n.context["count"]) for n in notes(engine))
    assert kinds == [("Certificate expiration alert: 7 days", "default", 1),
                     ("Certificate expiration alert: Today", "default", 1),
                     ("Certificate expiration warning: 60 days", "acme", 1),
                     ("Certificate expiration warning: 60 days", "default", 1)]
    assert alert_expiring_certificates(engine, now) == []
    # 15 days later "in-45" reaches 30 days: alerted again, at the new threshold only
    later = alert_expiring_certificates(engine, now + dt.timedelta(days=15))
    assert sorted((a.common_name, a.threshold) for a in later) == [
        ("in-3", 0), ("in-45", 30), ("other-tenant", 30)]
    # a renewed certificate (new expiry) is alerted again
    with Session(engine) as db:
        renewed = db.exec(select(Certificate).where(Certificate.common_name == "gone")).one()
        renewed.not_after = now + dt.timedelta(days=5)
        db.add(renewed)
        db.commit()
    assert [(a.common_name, a.threshold) for a in alert_expiring_certificates(engine, now)] == [
        ("gone", 7)]


def test_hostile_device_settings_and_a_closed_port_lose_nothing_else(store, seven_days):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    with Session(store) as db:
        db.add(Device(name="bad-settings", address="127.0.0.4",
                      settings={"tls_ports": ["443", None, True, -1, 70000, {"x": 1}]}))
        db.add(Device(name="not-a-list", address="127.0.0.2", settings={"tls_ports": "443"},
                      ports=[]))
        db.add(Device(name="closed", address="127.0.0.3", settings={"tls_ports": [closed_port]}))
        db.add(Device(name="unresolvable", address="no-such-host.invalid",
                      settings={"tls_ports": [443]}))
        db.commit()
    add_device(store, "web", [seven_days.port])
    scans = scan_served_certificates(store, timeout=3)
    by_name = {s.device: s for s in scans}
    assert set(by_name) == {"closed", "unresolvable", "web"}
    assert by_name["closed"].error and by_name["unresolvable"].error
    assert by_name["web"].common_name == "web.pamflow.test" and by_name["web"].changed
    assert not scan_served_certificates(store, timeout=3)[-1].changed  # same cert: unchanged
