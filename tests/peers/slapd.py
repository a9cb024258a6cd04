"""A real OpenLDAP slapd on 127.0.0.1 from a temp-dir slapd.conf.

Plain code (no pytest) so benchmarks and other tests (LDAP imports) can start the same
server. Needs Debian's slapd and ldap-utils. The directory:

- suffix ``dc=pamflow,dc=test`` (mdb), rootdn ``cn=admin,dc=pamflow,dc=test``;
- ``ou=people`` (inetOrgPerson users added with ``add_user``), ``ou=groups``,
  ``ou=services`` with ``cn=pamflow-admin`` — a non-root service account that may write
  every ``userPassword`` (what a PAM's directory admin account is);
- ``password-hash {SSHA}``: the RFC 3062 Password Modify extended operation stores salted
  hashes; users may change their own ``userPassword``; anonymous may only bind;
- Microsoft's ``msuser.schema`` is loaded, so AD-shaped entries (objectClass ``user``,
  ``sAMAccountName``, ``unicodePwd``) can be stored — slapd does not *act* as AD (a
  ``unicodePwd`` written is an opaque value, not a password one can bind with);
- plain LDAP on ``port`` with StartTLS and LDAPS on ``tls_port``, both with a self-signed
  certificate for 127.0.0.1 in ``ca_cert``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pamflow.platform import free_port
from tests.peers.tls import self_signed

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=pamflow,dc=test"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "msuser")


def ssha(password: str) -> str:
    """An ``{SSHA}`` userPassword value, as slapd's password-hash {SSHA} makes it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    cert, key, _der = self_signed(workdir, "ldap")
    return cert, key


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"slapd did not listen on {port} within {timeout}s")


@dataclass
class Slapd:
    """A running slapd and the helpers to seed it."""

    port: int
    tls_port: int
    workdir: Path
    proc: subprocess.Popen
    suffix: str = SUFFIX
    root_dn: str = f"cn=admin,{SUFFIX}"
    root_password: str = field(default="", repr=False)
    admin_dn: str = f"cn=pamflow-admin,ou=services,{SUFFIX}"
    admin_password: str = field(default="", repr=False)
    ca_cert: Path | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def people_dn(self) -> str:
        return f"ou=people,{self.suffix}"

    @classmethod
    def start(cls) -> Slapd:
        if not Path(SLAPD).exists():
            raise RuntimeError("slapd not installed: apt-get install slapd ldap-utils")
        workdir = Path(tempfile.mkdtemp(prefix="pamflow-slapd-"))
        (workdir / "db").mkdir()
        cert, key = _self_signed(workdir)
        root_password = secrets.token_urlsafe(16)
        admin_password = secrets.token_urlsafe(16)
        port, tls_port = free_port(), free_port()
        includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
        admin_dn = f"cn=pamflow-admin,ou=services,{SUFFIX}"
        (workdir / "slapd.conf").write_text(f"""{includes}
pidfile {workdir}/slapd.pid
argsfile {workdir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
password-hash {{SSHA}}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
sizelimit unlimited

database mdb
maxsize 268435456
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
rootpw {ssha(root_password)}
directory {workdir}/db
index objectClass eq
index uid,cn eq

access to attrs=userPassword,unicodePwd
    by self write
    by dn.exact="{admin_dn}" write
    by anonymous auth
    by * none
access to *
    by dn.exact="{admin_dn}" write
    by * read
""")
        log = workdir / "slapd.log"
        proc = subprocess.Popen(
            [SLAPD, "-d", "0", "-f", str(workdir / "slapd.conf"),
             "-h", f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        server = cls(port=port, tls_port=tls_port, workdir=workdir, proc=proc,
                     root_password=root_password, admin_dn=admin_dn,
                     admin_password=admin_password, ca_cert=cert)
        try:
            _wait_port(port, proc, log)
            server._seed()
        except BaseException:
            server.stop()
            raise
        return server

    def connection(self, dn: str | None = None, password: str | None = None):
        """An ldap3 connection bound as ``dn`` (default: the rootdn)."""
        import ldap3

        conn = ldap3.Connection(ldap3.Server(self.url, connect_timeout=5),
                                user=dn or self.root_dn,
                                password=self.root_password if dn is None else password,
                                receive_timeout=10, raise_exceptions=True)
        conn.bind()
        return conn

    def _seed(self) -> None:
        with self.connection() as conn:
            conn.add(self.suffix, ["dcObject", "organization"],
                     {"dc": "pamflow", "o": "pamflow tests"})
            for ou in ("people", "groups", "services"):
                conn.add(f"ou={ou},{self.suffix}", ["organizationalUnit"], {"ou": ou})
            conn.add(self.admin_dn, ["person"], {"cn": "pamflow-admin", "sn": "pamflow",
                                                 "userPassword": ssha(self.admin_password)})

    def add_entry(self, dn: str, object_classes: list[str], attributes: dict) -> str:
        """Any entry (for imports: groups, computers, AD-shaped users...)."""
        with self.connection() as conn:
            conn.add(dn, object_classes, attributes)
        return dn

    def add_user(self, uid: str, password: str | None, ou: str = "people", **attributes) -> str:
        """An inetOrgPerson ``uid=<uid>,ou=<ou>,<suffix>`` with an {SSHA} password."""
        dn = f"uid={uid},ou={ou},{self.suffix}"
        attrs = {"uid": uid, "cn": attributes.pop("cn", uid), "sn": attributes.pop("sn", uid)}
        if password is not None:
            attrs["userPassword"] = ssha(password)
        attrs.update(attributes)
        return self.add_entry(dn, ["inetOrgPerson"], attrs)

    def add_ad_user(self, cn: str, ou: str = "people", **attributes) -> str:
        """An AD-shaped ``user`` entry ``cn=<cn>,ou=<ou>,<suffix>`` (Microsoft's schema).

        slapd stores it but is no AD: its ``unicodePwd`` is an opaque value, not a password.
        """
        dn = f"cn={cn},ou={ou},{self.suffix}"
        attrs = {"cn": cn, "sn": cn, "instanceType": "4",
                 "objectCategory": f"CN=Person,CN=Schema,CN=Configuration,{self.suffix}",
                 "nTSecurityDescriptor": b"\x01\x00\x04\x80"}
        attrs.update(attributes)
        return self.add_entry(dn, ["user"], attrs)

    def can_bind(self, dn: str, password: str) -> bool:
        """True when a simple bind as ``dn`` with ``password`` succeeds."""
        import ldap3

        conn = ldap3.Connection(ldap3.Server(self.url, connect_timeout=5), user=dn,
                                password=password, receive_timeout=10)
        try:
            return bool(conn.bind())
        finally:
            conn.unbind()

    def read(self, dn: str, attribute: str) -> list:
        """Raw values of ``attribute`` of ``dn``, read as the rootdn."""
        with self.connection() as conn:
            conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=[attribute])
            return list(conn.entries[0][attribute].raw_values) if conn.entries else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


FIX = "install slapd and ldap-utils (scripts/test installs them)"


def slapd_missing() -> str | None:
    """Why the slapd peer cannot run here, or None when it can."""
    if not (Path(SLAPD).exists() and os.access(SLAPD, os.X_OK)):
        return f"slapd is not installed ({SLAPD} does not exist)"
    return None


def slapd_available() -> bool:
    return slapd_missing() is None
