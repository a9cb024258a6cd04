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
