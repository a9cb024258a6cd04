"""LDAP device import: computers from a directory into devices (adding devices
automatically).

Every run reads the computers in scope (paged) before writing anything, then upserts them
by ``entryUUID``/``objectGUID`` within the directory's tenant; computers that left the
scope are marked inactive (see :mod:`pamflow.directory.devices`). The platform is guessed
from the operating system attribute (``operatingSystem`` on AD), else the directory's
``default_platform``.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from .devices import DeviceImportResult, DeviceRecord, guess_platform, upsert_devices
from .ldap import DirectoryConnection
from .records import Rejected, Rejection, computer_record, external_id, shown_dn
from .settings import DirectorySettings


def read_computers(settings: DirectorySettings, password: str | None
                   ) -> tuple[list[DeviceRecord], set[str], list[Rejection], int]:
    """(records, ids present, rejections, pages) — nothing written."""
    settings.check()
    records: list[DeviceRecord] = []
    present: set[str] = set()
    rejected: list[Rejection] = []
    mapping = settings.mapping("computers")
    attributes = sorted({*mapping.values(), settings.default("id_attribute")})
    with DirectoryConnection(settings, password) as conn:
        for page in conn.search(settings.base_for("computers"), settings.filter_for("computers"),
                                attributes):
            for entry in page:
                try:
                    present.add(external_id(entry, settings))
                    rec = computer_record(entry, settings)
                except Rejected as exc:
                    rejected.append(Rejection(shown_dn(entry), str(exc)))
                    continue
                records.append(DeviceRecord(
                    external_id=rec.external_id, name=rec.name, address=rec.address,
                    platform=guess_platform(rec.operating_system, settings.default_platform),
                    extra={"dn": rec.dn, **({"operating_system": rec.operating_system}
                                           if rec.operating_system else {})},
                    where=shown_dn(entry)))
        pages = conn.stats.pages
    return records, present, rejected, pages


def import_computers(engine: Engine, settings: DirectorySettings, password: str | None,
                     actor: str = "robot:ldap-device-import",
                     progress: Callable[[float, str], None] | None = None) -> DeviceImportResult:
    """Read every computer in scope, then upsert them as devices (complete: the missing are
    marked inactive)."""
    records, present, rejected, _pages = read_computers(settings, password)
    if progress is not None:
        progress(50, f"{len(records)} computers read")
    return upsert_devices(engine, records, tenant=settings.tenant, source="ldap",
                          origin=settings.name, actor=actor, complete=True, present=present,
                          rejected=rejected, progress=progress)
