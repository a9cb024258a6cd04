"""Self-signed TLS certificates for the test peers (slapd, the WS-Management endpoint)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path


def self_signed(workdir: Path, stem: str, common_name: str = "127.0.0.1",
                key_type: str = "rsa") -> tuple[Path, Path, bytes]:
    """A certificate for 127.0.0.1/localhost valid two days: (cert PEM, key PEM 0600, DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        key_format = serialization.PrivateFormat.PKCS8
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_format = serialization.PrivateFormat.TraditionalOpenSSL
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / f"{stem}-cert.pem", workdir / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, key_format,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)
