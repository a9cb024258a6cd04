"""Helpers for the directory robot tests: a private slapd, bulk LDIF loads, a directory
registered in the vault, and settings pointing at it."""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path

from sqlmodel import Session

from pamflow.directory import DirectorySettings
from pamflow.models import Device
from tests.peers.slapd import Slapd
from tests.test_rotation import add_credential


def _ldif_value(attr: str, value: str | bytes) -> str:
    if isinstance(value, bytes) or not value.isascii() or value[:1] in (" ", ":", "<") \
            or any(c in value for c in "\r\n\x00"):
        raw = value if isinstance(value, bytes) else value.encode()
        return f"{attr}:: {base64.b64encode(raw).decode()}"
    return f"{attr}: {value}"


def ldif(entries: list[tuple[str, dict]]) -> str:
    out = []
    for dn, attrs in entries:
        lines = [_ldif_value("dn", dn)]
        for attr, values in attrs.items():
            for v in values if isinstance(values, list) else [values]:
                lines.append(_ldif_value(attr, v))
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def ldap_tool(slapd: Slapd, tool: str, text: str, *extra: str) -> None:
    """Run ldapadd / ldapmodify / ldapdelete as the rootdn over plain LDAP on 127.0.0.1."""
    with tempfile.TemporaryDirectory() as tmp:
        pw = Path(tmp) / "pw"
        pw.write_text(slapd.root_password)
        pw.chmod(0o600)
        data = Path(tmp) / "in"
        data.write_text(text)
        subprocess.run([tool, "-x", "-H", slapd.url, "-D", slapd.root_dn, "-y", str(pw),
                        *extra, "-f", str(data)], check=True, capture_output=True, timeout=300)


def people(slapd: Slapd, names: list[str], ou: str = "people", **extra) -> list[str]:
    entries = []
    for n in names:
        attrs = {"objectClass": "inetOrgPerson", "uid": n, "cn": n, "sn": "x",
                 "mail": f"{n}@corp.test", **extra}
        entries.append((f"uid={n},ou={ou},{slapd.suffix}", attrs))
    ldap_tool(slapd, "ldapadd", ldif(entries))
    return [dn for dn, _ in entries]


def user_dn(slapd: Slapd, uid: str, ou: str = "people") -> str:
    from ldap3.utils.dn import escape_rdn

    return f"uid={escape_rdn(uid)},ou={ou},{slapd.suffix}"


def register_bind(engine, slapd: Slapd, tenant: str = "default", password: str | None = None
                  ) -> None:
    """The directory as an ldap device, with the rootdn's password in the vault."""
    with Session(engine, expire_on_commit=False) as db:
        dev = Device(name="corp-ldap", address="127.0.0.1", platform="ldap", tenant=tenant)
        db.add(dev)
        db.commit()
    add_credential(engine, dev, slapd.root_dn, password or slapd.root_password)


def settings_for(slapd: Slapd, **kw) -> DirectorySettings:
    values = {"name": "corp", "url": slapd.url, "tls": "starttls", "ca_file": str(slapd.ca_cert),
              "bind_dn": slapd.root_dn, "bind_secret_device": "corp-ldap",
              "user_base": slapd.people_dn, "group_base": f"ou=groups,{slapd.suffix}",
              "computer_base": f"ou=computers,{slapd.suffix}", "page_size": 250}
    values.update(kw)
    return DirectorySettings(**values).check()


def fresh_slapd() -> Slapd:
    server = Slapd.start()
    server.add_entry(f"ou=computers,{server.suffix}", ["organizationalUnit"], {"ou": "computers"})
    server.add_entry(f"ou=former,{server.suffix}", ["organizationalUnit"], {"ou": "former"})
    return server
