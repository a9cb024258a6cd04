"""What the system monitors remember between runs: one JSON state per monitored thing."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from ._base import json_field, utcnow


class MonitorState(SQLModel, table=True):
    """The state a monitor keeps for one key between its runs.

    Keys name the monitor and the thing: ``usage`` (CPU counters, samples and the open
    episode of CPU and memory), ``disk:/var``, ``listener:gateway``, ``service:database``,
    ``backup``, ``pk:audit_log.id``, ``schedule:<problem>``. The monitors alone write it.
    """

    __tablename__ = "monitor_state"

    key: str = Field(primary_key=True, max_length=300)
    state: dict = json_field()
    updated_at: datetime = Field(default_factory=utcnow)


class AlarmDefinition(SQLModel, table=True):
    """When to raise an alarm: a metric of the system monitor, a condition against a
    threshold held for a duration, and the alarm's severity (scmonitoringcreatealarmjob)."""

    __tablename__ = "alarm_definition"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    metric: str = Field(max_length=300)  # cpu_percent, memory_percent, disk_free_percent:/var
    condition: str = Field(max_length=2)  # >, >=, <, <=
    threshold: float
    duration_seconds: int = 0
    severity: str = Field(max_length=10)  # low | medium | high | critical
    enabled: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class Alarm(SQLModel, table=True):
    """An alarm raised by a definition: open while its condition holds, then closed; closed
    alarms are deleted after six months (scmonitoringdeletealarmjob)."""

    __tablename__ = "alarm"

    id: int | None = Field(default=None, primary_key=True)
    definition_id: int = Field(foreign_key="alarm_definition.id", index=True)
    name: str = Field(max_length=100)
    metric: str = Field(max_length=300)
    severity: str = Field(max_length=10)
    state: str = Field(default="open", max_length=10, index=True)  # open | closed
    opened_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = Field(default=None, index=True)
    value: float  # the diagnostic value that opened it
    last_value: float


class MaintenanceWindow(SQLModel, table=True):
    """A time a device spends in maintenance mode (deviceoperationmodecheck): the device
    enters at ``starts_at`` and leaves at ``ends_at``."""

    __tablename__ = "maintenance_window"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    starts_at: datetime = Field(index=True)
    ends_at: datetime = Field(index=True)
    reason: str = Field(default="", max_length=200)
    created_by: str = Field(default="", max_length=100)
    created_at: datetime = Field(default_factory=utcnow)
