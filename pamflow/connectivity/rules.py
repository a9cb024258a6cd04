"""The rules of the connectivity test: which devices, what a state change means, what is
written and notified (see the package's documentation). No Prefect here."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, SupportsIndex, SupportsInt

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit, notifications
from ..errors import PamflowError
from ..models import Connectivity, Device, table_of
from .prober import (
    SSH_PORT,
    DeviceResult,
    Target,
    probe,
)

ACTOR = "robot:connectivity-test"
LOST = "Lost of connectivity"
RESTORED = "Connectivity restored"
_DEVICE = table_of(Device)


class BatchesFailed(PamflowError, RuntimeError):
    """Some device batches of a connectivity test failed; the others were recorded."""


@dataclass
class BatchReport:
    """What one batch did; small and free of secrets (it becomes a Prefect task result)."""

    devices: int = 0  # active devices in the batch
    tested: int = 0
    reachable: int = 0
    unreachable: int = 0
    no_ports: int = 0
    inconclusive: int = 0  # not recorded: a local failure, not the device's (see LOCAL)
    lost: list[str] = field(default_factory=list)  # device names
    restored: list[str] = field(default_factory=list)
    unreachable_devices: list[dict] = field(default_factory=list)  # name, address, ports, reason

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunSummary:
    """A whole run's totals over its batches' reports (small, free of secrets)."""

    devices: int
    tested: int
    reachable: int
    unreachable: int
    no_ports: int
    inconclusive: int
    lost: int
    restored: int
    batches: int
    failed_batches: list[str]  # device id ranges whose batch failed
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(reports: Sequence[BatchReport], batches: int, failed: list[str], seconds: float
              ) -> RunSummary:
    """The totals of ``reports``, with the batch count, the failed batches and the duration."""
    return RunSummary(
        devices=sum(r.devices for r in reports), tested=sum(r.tested for r in reports),
        reachable=sum(r.reachable for r in reports), unreachable=sum(r.unreachable for r in reports),
        no_ports=sum(r.no_ports for r in reports), inconclusive=sum(r.inconclusive for r in reports),
        lost=sum(len(r.lost) for r in reports), restored=sum(len(r.restored) for r in reports),
        batches=batches, failed_batches=failed, seconds=round(seconds, 2))


def _port_list(raw: object) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Valid ports (deduplicated, in order) and the entries that are not ports."""
    items = raw if isinstance(raw, list | tuple) else ([] if raw in (None, "") else [raw])
    ports: list[int] = []
    invalid: list[str] = []
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            if isinstance(item, str):
                port = int(item.strip())
            elif isinstance(item, SupportsInt | SupportsIndex | bytes):
                port = int(item)
            else:
                raise TypeError
        except (TypeError, ValueError):
            invalid.append(str(item)[:20])
            continue
        if not 1 <= port <= 65535:
            invalid.append(str(item)[:20])
        elif port not in ports:
            ports.append(port)
    return tuple(ports), tuple(invalid)


def target_of(device_id: int | None, name: str, address: str, ports: object,
              settings: dict | None = None) -> Target:
    """The ``Target`` for a device row's values (ports and settings as stored)."""
    settings = settings if isinstance(settings, dict) else {}
    valid, invalid = _port_list(ports)
    ssh_ports = {SSH_PORT}
    ssh_setting = settings.get("ssh_port", settings.get("ssh_ports"))
    if ssh_setting is not None:
        ssh_ports.update(_port_list(ssh_setting)[0])
    rule = "all" if str(settings.get("connectivity_rule", "any")).lower() == "all" else "any"
    return Target(device_id, name, (address or "").strip(), valid, frozenset(ssh_ports), rule, invalid)


def plan_batches(engine: Engine, batch_size: int = 1000) -> list[tuple[int, int]]:
    """Active devices split into ``(first_id, last_id)`` ranges of ``batch_size`` devices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with Session(engine) as db:
        rows = db.exec(select(col(Device.id)).where(col(Device.active)).order_by(col(Device.id))).all()
    ids = [i for i in rows if i is not None]
    return [(ids[i], ids[min(i + batch_size, len(ids)) - 1]) for i in range(0, len(ids), batch_size)]


def load_targets(engine: Engine, first_id: int | None = None, last_id: int | None = None
                 ) -> tuple[list[Target], int]:
    """Active devices with ports in ``[first_id, last_id]``, and how many have none."""
    t = _DEVICE.c
    query = sa.select(t.id, t.name, t.address, t.ports, t.settings).where(t.active.is_(True))
    if first_id is not None:
        query = query.where(t.id >= first_id)
    if last_id is not None:
        query = query.where(t.id <= last_id)
    targets: list[Target] = []
    no_ports = 0
    with engine.connect() as conn:
        for row in conn.execute(query.order_by(t.id)):
            target = target_of(row.id, row.name, row.address, row.ports, row.settings)
            if target.ports:
                targets.append(target)
            elif target.invalid_ports:  # only malformed entries: tested, and unreachable
                targets.append(target)
            else:
                no_ports += 1
    return targets, no_ports


def _notify(db: Session, kind: str, device: dict, result: DeviceResult, maintenance: bool) -> None:
    target = result.target
    action = "connectivity.lost" if kind == LOST else "connectivity.restored"
    context = {
        "device_id": target.device_id,
        "device": target.name,
        "address": target.address,
        "ports": list(target.ports),
        "reason": result.reason,
        "detail": result.detail(),
        "checked_at": result.checked_at.isoformat(),
        "previous": device["connectivity"],
    }
    if not maintenance:
        notifications.queue(db, kind, context=context, key=f"device:{target.device_id}",
                            tenant=device.get("tenant") or "default")
    audit.record(db, ACTOR, action, "device", target.device_id,
                 {"from": device["connectivity"], "to": result.connectivity,
                  "reason": result.reason, "ports": list(target.ports),
                  "notified": not maintenance})


def record_results(engine: Engine, results: Sequence[DeviceResult]) -> BatchReport:
    """Write a batch's results in one transaction; queue notifications for state changes."""
    report = BatchReport()
    if not results:
        return report
    t = _DEVICE.c
    table = _DEVICE
    ids = [r.target.device_id for r in results]
    plain_seen: list[dict[str, Any]] = []
    plain_unseen: list[dict[str, Any]] = []
    changes: list[tuple[DeviceResult, dict]] = []
    with Session(engine) as db:
        current = {
            row.id: row._asdict()
            for row in db.execute(
                sa.select(t.id, t.connectivity, t.maintenance_mode, t.active).where(t.id.in_(ids)))
        }
        for result in results:
            device = current.get(result.target.device_id)
            if device is None or not device["active"]:  # deleted or deactivated meanwhile
                continue
            if result.inconclusive:
                continue
            old, new = device["connectivity"], result.connectivity
            if old != new and old in (Connectivity.reachable, Connectivity.unreachable):
                changes.append((result, device))
                continue
            params: dict[str, Any] = {"_id": result.target.device_id, "_state": new,
                                      "_detail": result.detail(), "_checked": result.checked_at}
            if old != new:  # first check: silent
                params["_updated"] = result.checked_at
            (plain_seen if result.reachable else plain_unseen).append(params)
        by_id: sa.BindParameter[Any] = sa.bindparam("_id")
        base: dict[str, sa.BindParameter[Any]] = {
            "connectivity": sa.bindparam("_state"), "connectivity_detail": sa.bindparam("_detail"),
            "last_checked_at": sa.bindparam("_checked")}
        for rows, seen in ((plain_seen, True), (plain_unseen, False)):
            for with_updated in (True, False):
                group = [r for r in rows if ("_updated" in r) == with_updated]
                if not group:
                    continue
                bound = dict(base)
                if seen:
                    bound["last_seen_at"] = sa.bindparam("_checked")
                if with_updated:
                    bound["updated_at"] = sa.bindparam("_updated")
                db.execute(sa.update(table).where(t.id == by_id).values(**bound), group)
        for result, device in changes:
            values: dict[str, str | datetime] = {
                "connectivity": result.connectivity, "connectivity_detail": result.detail(),
                "last_checked_at": result.checked_at, "updated_at": result.checked_at}
            if result.reachable:
                values["last_seen_at"] = result.checked_at
            done = db.exec(
                sa.update(table)
                .where(t.id == result.target.device_id, t.connectivity == device["connectivity"])
                .values(**values)
            )
            if done.rowcount != 1:  # another run recorded this change first: it notified
                continue
            if result.reachable:
                _notify(db, RESTORED, device, result, device["maintenance_mode"])
                report.restored.append(result.target.name)
            else:
                _notify(db, LOST, device, result, device["maintenance_mode"])
                report.lost.append(result.target.name)
        db.commit()
    for result in results:
        if result.inconclusive:
            report.inconclusive += 1
            continue
        report.tested += 1
        if result.reachable:
            report.reachable += 1
        else:
            report.unreachable += 1
            report.unreachable_devices.append(unreachable_row(result))
    return report


def unreachable_row(result: DeviceResult) -> dict:
    """A row of the unreachable-devices table (name, address, ports, reason)."""
    target = result.target
    return {
        "name": target.name,
        "address": target.address,
        "ports": ", ".join(str(p) for p in target.ports) or "-",
        "reason": (result.reason or "")[:300],
    }


def check_devices(engine: Engine, first_id: int | None = None, last_id: int | None = None,
                  **options) -> BatchReport:
    """One batch end to end: load the active devices in the id range, probe them, record.

    Large batches are probed by one process per core (``processes``, default: every core).
    """
    targets, no_ports = load_targets(engine, first_id, last_id)
    options.setdefault("processes", os.cpu_count() or 1)
    results = probe(targets, **options) if targets else []
    report = record_results(engine, results)
    report.no_ports = no_ports
    report.devices = len(targets) + no_ports
    return report
