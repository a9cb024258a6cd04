"""Certificate expiration: the certificates in the store and the ones devices actually serve
on their TLS ports, alerted at 90, 60, 30, 15, 7, 1 and 0 days before expiry (seed 003),
each alert once per certificate, threshold and expiry date.

A served certificate is read without trusting it (the point is to see what is there,
expired or self-signed included) and its issuer is recorded. A certificate discovered late
(5 days left, say) gets only the tightest threshold reached (7 days), not the ones it
passed. A renewed certificate (new expiry) is alerted again. The once-only guarantee is a
unique row per (certificate, threshold, expiry) written in the same transaction as the
notification: a second run, or a concurrent one, sends nothing twice.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import ssl
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..errors import PamflowError
from ..models import Certificate, CertificateAlert, Device, utcnow

log = logging.getLogger(__name__)

THRESHOLDS = (90, 60, 30, 15, 7, 1, 0)
# the seed's names: "alert" at 30, 7, 1 and 0 days, "warning" at 90, 60 and 15
ALERT_TYPES = {
    90: "Certificate expiration warning: 90 days",
    60: "Certificate expiration warning: 60 days",
    30: "Certificate expiration alert: 30 days",
    15: "Certificate expiration warning: 15 days",
    7: "Certificate expiration alert: 7 days",
    1: "Certificate expiration alert: 1 day",
    0: "Certificate expiration alert: Today",
}
# ports read when a device does not list its TLS ports in settings["tls_ports"]
TLS_PORTS = frozenset({443, 465, 636, 993, 995, 5986, 8443, 9443})
LIST_MAX = 200  # certificates named in one notification; the rest are counted
CERT_MAX_BYTES = 64 * 1024


class CertificateReadError(PamflowError):
    """A device's TLS port could not be read (device, port and reason named)."""


@dataclass(frozen=True)
class ServedCertificate:
    """What a TLS port presented (not verified: read as it is)."""

    common_name: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint: str
    self_signed: bool


def _name(name: object) -> str:
    rfc4514 = getattr(name, "rfc4514_string", None)
    return rfc4514() if callable(rfc4514) else str(name)


def parse_certificate(der: bytes) -> ServedCertificate:
    """The fields pamflow keeps from a DER certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if len(der) > CERT_MAX_BYTES:
        raise CertificateReadError(f"certificate of {len(der)} bytes is larger than "
                                   f"{CERT_MAX_BYTES}")
    try:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else _name(cert.subject) or "(no subject)"
        return ServedCertificate(
            common_name=cn[:255],
            issuer=_name(cert.issuer)[:1000],
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint=hashlib.sha256(der).hexdigest(),
            self_signed=cert.issuer == cert.subject,
        )
    except ValueError as exc:
        raise CertificateReadError(f"not a readable X.509 certificate: {exc}") from None


def read_served_certificate(host: str, port: int, timeout: float = 5.0,
                            server_name: str | None = None) -> ServedCertificate:
    """The certificate ``host:port`` presents in a TLS handshake, read without verifying it
    (CERT_NONE: an expired or self-signed one must be seen too); nothing is sent after the
    handshake. ``server_name`` (SNI) defaults to ``host`` unless it is an address."""
    if server_name is None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            server_name = host
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # read, not trust: only the certificate's dates are used
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise CertificateReadError(f"{host}:{port}: TLS handshake failed: "
                                   f"{exc.reason or exc}") from None
    except OSError as exc:
        raise CertificateReadError(f"{host}:{port}: {exc.strerror or exc}") from None
    if not der:
        raise CertificateReadError(f"{host}:{port}: no certificate presented")
    return parse_certificate(der)


def tls_ports(device: Device) -> list[int]:
    """The device's TLS ports: ``settings["tls_ports"]`` when set, else its listed ports
    that are well-known TLS ports. Malformed entries are ignored."""
    listed = device.settings.get("tls_ports") if isinstance(device.settings, dict) else None
    if isinstance(listed, list):
        ports = [p for p in listed if isinstance(p, int) and not isinstance(p, bool)]
    else:
        ports = [p for p in device.ports or [] if isinstance(p, int) and p in TLS_PORTS]
    return sorted({p for p in ports if 0 < p < 65536})


@dataclass(frozen=True)
class PortScan:
    """One device port read by the robot (no secret: names, dates, issuer, error)."""

    device: str
    address: str
    port: int
    common_name: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    changed: bool = False
    error: str | None = None


def scan_served_certificates(engine: Engine, tenant: str | None = None, workers: int = 32,
                             timeout: float = 5.0, limit: int = 10000,
                             progress: Callable[[int, int], None] | None = None
                             ) -> list[PortScan]:
    """Read the certificate on every TLS port of the active devices (of ``tenant``) and
    keep it as the device's served certificate for that port (one row per device and port,
    updated when the device serves another certificate). ``progress(done, total)`` is
    called as ports are read (every 5 % or so)."""
    with Session(engine) as db:
        query = select(Device).where(col(Device.active).is_(True)).order_by(col(Device.id))
        if tenant is not None:
            query = query.where(col(Device.tenant) == tenant)
        targets = [(d.id, d.name, d.address, d.tenant, port)
                   for d in db.exec(query.limit(limit)) for port in tls_ports(d)]

    def read(t: tuple) -> tuple[tuple, ServedCertificate | None, str | None]:
        try:
            return t, read_served_certificate(t[2], t[4], timeout), None
        except CertificateReadError as exc:
            return t, None, str(exc)

    results: list[PortScan] = []
    if not targets:
        return results
    read_all = []
    step = max(1, len(targets) // 20)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        for done, outcome in enumerate(pool.map(read, targets), start=1):
            read_all.append(outcome)
            if progress is not None and (done % step == 0 or done == len(targets)):
                progress(done, len(targets))
    now = utcnow()
    with Session(engine) as db:
        for (device_id, name, address, dev_tenant, port), served, error in read_all:
            if served is None:
                results.append(PortScan(name, address, port, error=error))
                continue
            row = db.exec(select(Certificate).where(
                col(Certificate.source) == "served", col(Certificate.device_id) == device_id,
                col(Certificate.port) == port)).first()
            changed = row is None or row.fingerprint != served.fingerprint
            if row is None:
                row = Certificate(source="served", device_id=device_id, port=port,
                                  tenant=dev_tenant, common_name=served.common_name,
                                  not_after=served.not_after)
            if changed:
                row.common_name, row.issuer = served.common_name, served.issuer
                row.serial, row.fingerprint = served.serial, served.fingerprint
                row.not_before, row.not_after = served.not_before, served.not_after
                row.self_signed, row.alerts_sent = served.self_signed, []
                audit.record(db, "robot:certificate-expiration", "certificate.served",
                             "certificate", f"{name}:{port}", {
                                 "device": name, "port": port, "common_name": row.common_name,
                                 "issuer": row.issuer, "not_after": row.not_after.isoformat(),
                                 "fingerprint": row.fingerprint})
            row.tenant, row.last_seen_at = dev_tenant, now
            db.add(row)
            results.append(PortScan(name, address, port, served.common_name, served.issuer,
                                    served.not_after.isoformat(), changed))
        db.commit()
    return results


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole calendar days (UTC) from today to the expiry day: 0 means it expires today;
    negative, it has expired."""
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=UTC)
    return (not_after.astimezone(UTC).date() - now.astimezone(UTC).date()).days


def threshold_reached(days: int, thresholds: Sequence[int] = THRESHOLDS) -> int | None:
    """The tightest threshold ``days`` has reached (0 once expired), None above them all."""
    reached = [t for t in thresholds if max(days, 0) <= t]
    return min(reached) if reached else None


@dataclass(frozen=True)
class ExpirationAlert:
    """One certificate alerted at one threshold."""

    certificate_id: int
    tenant: str
    source: str
    device: str | None
    port: int | None
    common_name: str
    issuer: str | None
    not_after: str
    days_left: int
    threshold: int
    notification: str


def _alert_text(threshold: int, tenant: str, certs: Sequence[ExpirationAlert]) -> tuple[str, str]:
    """Subject and body of one certificate expiration notification (the template's job
    once the catalogue has templates)."""
    when = "today" if threshold == 0 else f"in {threshold} day{'s' if threshold != 1 else ''}"
    subject = f"{len(certs)} certificate(s) expire {when} (tenant {tenant})"
    lines = [f"Certificates of tenant {tenant} that expire {when} or sooner:", ""]
    for c in certs[:LIST_MAX]:
        where = f" on {c.device}:{c.port}" if c.device and c.port else (
            f" of {c.device}" if c.device else " (store)")
        expired = " (expired)" if c.days_left < 0 else ""
        lines.append(f"- {c.common_name}{where}, issued by {c.issuer or 'unknown'}, "
                     f"expires {c.not_after}{expired}")
    if len(certs) > LIST_MAX:
        lines.append(f"... and {len(certs) - LIST_MAX} more")
    return subject, "\n".join(lines)


def alert_expiring_certificates(engine: Engine, now: datetime | None = None,
                                thresholds: Sequence[int] = THRESHOLDS,
                                tenant: str | None = None) -> list[ExpirationAlert]:
    """Queue one notification per tenant and threshold listing the certificates that
    reached it and were not alerted at it yet; record each (certificate, threshold)."""
    now = now or utcnow()
    horizon = max(thresholds)
    due: dict[tuple[str, int], list[tuple[Certificate, str | None, int]]] = defaultdict(list)
    with Session(engine) as db:
        query = (select(Certificate, Device)
                 .join(Device, col(Device.id) == col(Certificate.device_id), isouter=True)
                 .order_by(col(Certificate.not_after), col(Certificate.id)))
        if tenant is not None:
            query = query.where(col(Certificate.tenant) == tenant)
        sent = {(a.certificate_id, a.threshold_days, _key(a.not_after))
                for a in db.exec(select(CertificateAlert))}
        for cert, device in db.exec(query):
            if device is not None and not device.active:
                continue
            left = days_left(cert.not_after, now)
            if left > horizon:
                break  # ordered by expiry: the rest are further away
            reached = threshold_reached(left, thresholds)
            if reached is None or (cert.id, reached, _key(cert.not_after)) in sent:
                continue
            due[(cert.tenant, reached)].append((cert, device.name if device else None, left))
    alerts: list[ExpirationAlert] = []
    for (cert_tenant, threshold), group in sorted(due.items(), key=lambda kv: kv[0]):
        alerts.extend(_send_group(engine, cert_tenant, threshold, group))
    return alerts


def _key(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat()


def _send_group(engine: Engine, tenant: str, threshold: int,
                group: Iterable[tuple[Certificate, str | None, int]]) -> list[ExpirationAlert]:
    type_name = ALERT_TYPES[threshold]
    made = [ExpirationAlert(certificate_id=c.id or 0, tenant=tenant, source=c.source,
                            device=dev, port=c.port, common_name=c.common_name,
                            issuer=c.issuer, not_after=c.not_after.isoformat(), days_left=left,
                            threshold=threshold, notification=type_name)
            for c, dev, left in group]
    subject, body = _alert_text(threshold, tenant, made)
    with Session(engine) as db:
        try:
            note = notifications.queue(db, type_name, subject, body, {
                "tenant": tenant, "threshold_days": threshold,
                "certificates": [{"id": a.certificate_id, "common_name": a.common_name,
                                  "device": a.device, "port": a.port,
                                  "not_after": a.not_after} for a in made[:LIST_MAX]],
                "count": len(made)})
            db.flush()
            for (cert, _dev, left), alert in zip(group, made, strict=True):
                db.add(CertificateAlert(certificate_id=alert.certificate_id,
                                        threshold_days=threshold, not_after=cert.not_after,
                                        days_left=left, notification_id=note.id))
                row = db.get(Certificate, alert.certificate_id)
                if row is not None and threshold not in row.alerts_sent:
                    row.alerts_sent = sorted({*row.alerts_sent, threshold}, reverse=True)
                    db.add(row)
                audit.record(db, "robot:certificate-expiration", "certificate.expiration_alert",
                             "certificate", alert.certificate_id, {
                                 "threshold_days": threshold, "days_left": left,
                                 "not_after": alert.not_after, "notification": type_name})
            db.commit()
        except sa.exc.IntegrityError:
            # another run alerted (some of) them meanwhile: it sent the notification
            db.rollback()
            log.info("certificate alerts at %d days for tenant %s were sent by another run",
                     threshold, tenant)
            return []
    return made
