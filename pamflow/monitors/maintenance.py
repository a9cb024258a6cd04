"""Maintenance mode check (deviceoperationmodecheck): "checks devices' maintenance mode
definitions and marks devices as maintenance or operation modes".

A maintenance window puts one device in maintenance mode from ``starts_at`` to ``ends_at``.
Each run marks the devices whose window is open (``Device.maintenance_mode``), and takes
back out the ones it put in whose windows have all closed; a device put in maintenance by
hand (without a window) is never taken out by the robot. Every enter and leave is audited.
The robots that read ``maintenance_mode`` skip such devices (the expired-password and
password-check robots) or keep quiet about them (the connectivity test).

``next_change`` is the next window boundary: the Prefect layer schedules a run of the
robot for that moment, so devices enter and leave on time without a run every minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit
from ..models import Device, MaintenanceWindow
from . import MonitorError
from . import state as monitor_state

ACTOR = "robot:maintenance-mode-check"
MAX_LENGTH = timedelta(days=366)


class MaintenanceError(MonitorError, ValueError):
    """A maintenance window that cannot be kept (times, length, reason, device)."""


def add_window(db: Session, device: Device, starts_at: datetime, ends_at: datetime,
               reason: str, actor: str) -> MaintenanceWindow:
    """Add a window for ``device`` (the caller commits)."""
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise MaintenanceError("maintenance window times must carry a time zone")
    if ends_at <= starts_at:
        raise MaintenanceError(f"device {device.name}: the window must end after it starts")
    if ends_at - starts_at > MAX_LENGTH:
        raise MaintenanceError(f"device {device.name}: a window lasts at most 366 days")
    if len(reason) > 200 or any(ord(c) < 32 for c in reason):
        raise MaintenanceError("the reason is one line of at most 200 characters")
    if device.id is None:
        raise MaintenanceError("the device is not stored")
    window = MaintenanceWindow(device_id=device.id, starts_at=starts_at, ends_at=ends_at,
                               reason=reason, created_by=actor[:100])
    db.add(window)
    db.flush()
    audit.record(db, actor, "maintenance_window.create", "device", device.id,
                 {"window": window.id, "starts_at": starts_at.isoformat(),
                  "ends_at": ends_at.isoformat(), "reason": reason})
    return window


@dataclass
class MaintenanceReport:
    entered: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    in_maintenance: int = 0
    next_change: datetime | None = None


def apply_windows(engine: Engine, now: datetime) -> MaintenanceReport:
    """Mark devices in and out of maintenance mode by their windows at ``now``."""
    report = MaintenanceReport()
    window = MaintenanceWindow
    with Session(engine) as db:
        open_ids = set(db.exec(select(col(window.device_id)).where(col(window.starts_at) <= now)
                               .where(col(window.ends_at) > now)).all())
        managed = set(monitor_state.load(db, "maintenance").get("devices") or [])
        for device in db.exec(select(Device).where(col(Device.id).in_(sorted(open_ids | managed)))
                              .order_by(col(Device.id))):
            device_id = device.id
            if device_id in open_ids and not device.maintenance_mode:
                device.maintenance_mode = True
                managed.add(device_id)
                report.entered.append(device.name)
                audit.record(db, ACTOR, "device.maintenance_enter", "device", device_id,
                             {"name": device.name, "address": device.address})
            elif device_id not in open_ids and device_id in managed:
                managed.discard(device_id)
                if device.maintenance_mode:
                    device.maintenance_mode = False
                    report.left.append(device.name)
                    audit.record(db, ACTOR, "device.maintenance_leave", "device", device_id,
                                 {"name": device.name, "address": device.address})
            db.add(device)
        managed &= {d for d in managed if db.get(Device, d) is not None}
        monitor_state.save(db, "maintenance", {"devices": sorted(managed)})
        report.in_maintenance = db.exec(select(sa.func.count()).select_from(Device)
                                        .where(col(Device.maintenance_mode))).one()
        starts = db.exec(select(sa.func.min(window.starts_at)).where(col(window.starts_at) > now)).one()
        ends = db.exec(select(sa.func.min(window.ends_at)).where(col(window.ends_at) > now)).one()
        db.commit()
    report.next_change = min((t for t in (starts, ends) if t is not None), default=None)
    return report
