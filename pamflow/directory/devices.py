"""Devices imported from an outside source (a directory's computers, an external database):
upserted by the source's external id within one tenant, never deleted.

Each imported device records where it came from: ``source`` (``ldap`` | ``database``) and
``settings["origin"]`` (the directory or database block's name), so two sources never
touch each other's devices. A device that is no longer in a *complete* read of its
source is marked inactive (``active = False``, ``settings["removed_at"]``): its
credentials and history stay, and it comes back active if it reappears. A device whose
address already belongs to another device of the tenant (say one entered by hand) is
rejected with that reason, not merged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pamflow import audit
from pamflow.models import Device, utcnow

from .records import Rejection

CHUNK = 500
PLATFORMS = ("linux", "windows", "ldap", "network", "unix", "macos")
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class DeviceRecord:
    external_id: str
    name: str
    address: str | None
    platform: str | None = None
    site: str | None = None
    ports: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # non-secret facts (dn, os, ...)
    where: str = ""  # for messages: the DN, or the row


@dataclass
class DeviceImportResult:
    origin: str
    tenant: str
    source: str
    read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    restored: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "rejected"}
        out["rejected"] = len(self.rejected)
        return out


def guess_platform(operating_system: str | None, default: str) -> str:
    text = (operating_system or "").lower()
    if "windows" in text:
        return "windows"
    if any(w in text for w in ("linux", "ubuntu", "debian", "red hat", "rhel", "centos", "suse")):
        return "linux"
    if any(w in text for w in ("mac os", "macos", "darwin")):
        return "macos"
    return default


def upsert_devices(engine: Engine, records: list[DeviceRecord], *, tenant: str, source: str,
                   origin: str, actor: str, complete: bool, present: set[str] | None = None,
                   rejected: list[Rejection] | None = None,
                   progress: Callable[[float, str], None] | None = None) -> DeviceImportResult:
    """Create or update ``records`` as devices of ``tenant``; when ``complete``, mark this
    origin's devices missing from ``present`` (default: the records' ids) inactive."""
    from pamflow.inventory import normalize_address

    result = DeviceImportResult(origin, tenant, source, read=len(records) + len(rejected or []))
    result.rejected = list(rejected or [])
    now = utcnow()
    with Session(engine) as db:
        mine = {d.external_id: d.id for d in db.exec(select(Device).where(
            col(Device.tenant) == tenant, col(Device.source) == source))
            if (d.settings or {}).get("origin") == origin and d.external_id}
    seen: set[str] = set()
    seen_addresses: set[str] = set()
    for start in range(0, len(records), CHUNK):
        chunk = records[start:start + CHUNK]
        created: list[str] = []
        updated: list[str] = []
        with Session(engine) as db:
            wanted = {normalize_address(r.address) for r in chunk if r.address}
            wanted.discard(None)
            holders = {d.address: d for d in db.exec(select(Device).where(
                col(Device.tenant) == tenant, col(Device.address).in_(wanted)))}
            ids = {i for r in chunk if (i := mine.get(r.external_id)) is not None}
            loaded = {d.id: d for d in db.exec(select(Device).where(col(Device.id).in_(ids)))}
            for rec in chunk:
                def reject(reason: str, rec: DeviceRecord = rec) -> None:
                    result.rejected.append(Rejection(rec.where[:300], reason))

                if rec.external_id in seen:
                    reject(f"external id {rec.external_id[:80]!r} appears twice")
                    continue
                seen.add(rec.external_id)
                if not rec.name or len(rec.name) > 255 or _NAME_BAD.search(rec.name):
                    reject("the name is empty, longer than 255 characters or has control "
                           "characters")
                    continue
                address = normalize_address(rec.address) if rec.address else None
                if address is None:
                    reject(f"no usable address ({str(rec.address)[:80]!r})" if rec.address
                           else "no address")
                    continue
                if address in seen_addresses:
                    reject(f"address {address} appears twice in this import")
                    continue
                seen_addresses.add(address)
                platform = rec.platform or "linux"
                if platform not in PLATFORMS:
                    reject(f"platform {platform[:40]!r} is not one of {', '.join(PLATFORMS)}")
                    continue
                dev_id = mine.get(rec.external_id)
                dev = loaded.get(dev_id) if dev_id is not None else None
                holder = holders.get(address)
                if holder is not None and (dev is None or holder.id != dev.id):
                    reject(f"address {address} already belongs to device {holder.name!r} "
                           f"(id {holder.id}, source {holder.source})")
                    continue
                fields: dict[str, Any] = {"name": rec.name, "address": address,
                                          "platform": platform}
                if rec.site is not None:
                    fields["site"] = rec.site
                if rec.ports is not None:
                    fields["ports"] = rec.ports
                if dev is None:
                    dev = Device(tenant=tenant, source=source, external_id=rec.external_id,
                                 settings={"origin": origin, **rec.extra}, last_seen_at=now,
                                 **fields)
                    db.add(dev)
                    created.append(rec.name)
                    result.created += 1
                    continue
                changes = {k: v for k, v in fields.items() if getattr(dev, k) != v}
                settings = {**(dev.settings or {}), **rec.extra, "origin": origin}
                settings.pop("removed_at", None)
                if settings != (dev.settings or {}):
                    changes["settings"] = settings
                if not dev.active:
                    changes["active"] = True
                    result.restored += 1
                dev.last_seen_at = now
                if changes:
                    for k, v in changes.items():
                        setattr(dev, k, v)
                    dev.updated_at = now
                    updated.append(rec.name)
                    result.updated += 1
                else:
                    result.unchanged += 1
                db.add(dev)
            if created or updated:
                audit.record(db, actor, "devices_imported", "device", None,
                             {"source": source, "origin": origin, "tenant": tenant,
                              "created": created, "updated": updated})
            db.commit()
        if progress is not None:
            progress(50 + 40 * (start + len(chunk)) / max(1, len(records)),
                     f"{start + len(chunk)} of {len(records)} devices written")
    if complete:
        keep = present if present is not None else seen
        with Session(engine) as db:
            gone = [d for d in db.exec(select(Device).where(
                col(Device.tenant) == tenant, col(Device.source) == source,
                col(Device.active))) if (d.settings or {}).get("origin") == origin
                and d.external_id not in keep]
            for d in gone:
                d.active, d.updated_at = False, now
                d.settings = {**(d.settings or {}), "removed_at": now.isoformat()}
                db.add(d)
            if gone:
                audit.record(db, actor, "devices_removed", "device", None,
                             {"source": source, "origin": origin, "tenant": tenant,
                              "reason": "no longer in the source", "devices": [d.name for d in gone]})
            db.commit()
            result.removed = len(gone)
    return result
