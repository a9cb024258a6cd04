"""The monitors' thresholds, mounts, listeners and services (saved in a Prefect block by the
Prefect layer, validated here). Defaults are the seeds' figures (003): high at 70 %,
critical at 90 % over 10 minutes; free disk under 30, 20 and 10 %."""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"name {value[:40]!r} must be 1-63 letters, digits, spaces, dots, "
                         "dashes or underscores")
    return value


def check_host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _HOST.match(value):
        raise ValueError(f"host {value[:40]!r} is neither an IP address nor a host name")
    return value.lower()


class Listener(BaseModel):
    """A TCP listener the monitor watches: ``port`` on this machine (``host`` narrows it to
    one local address; ``*`` is any)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    port: int = Field(ge=1, le=65535)
    host: str = "*"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return v if v == "*" else check_host(v)


class Connector(BaseModel):
    """A connector: a host and port reached through an SSH tunnel or a relay, watched by its
    heartbeat (the tunnel's endpoint answering) every ``heartbeat_interval_seconds``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    via: Literal["ssh", "relay"] = "ssh"
    heartbeat_interval_seconds: float = Field(default=900.0, gt=0, le=86400)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


class MonitorSettings(BaseModel):
    """Everything the system monitors read from configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_high: float = Field(default=70.0, gt=0, le=100)
    cpu_critical: float = Field(default=90.0, gt=0, le=100)
    memory_high: float = Field(default=70.0, gt=0, le=100)
    memory_critical: float = Field(default=90.0, gt=0, le=100)
    window_seconds: float = Field(default=600.0, gt=0, le=86400,
                                  description="How long usage must stay over a level.")
    tolerance_seconds: float = Field(default=60.0, ge=0, le=3600,
                                     description="Slack for runs that start a little late.")

    disk_mounts: tuple[str, ...] = ("/",)
    disk_low: float = Field(default=30.0, gt=0, lt=100, description="Free % of low criticality.")
    disk_medium: float = Field(default=20.0, gt=0, lt=100)
    disk_high: float = Field(default=10.0, gt=0, lt=100)
    disk_report_hour: int | None = Field(default=8, ge=0, le=23, description=(
        "UTC hour from which the daily storage report is sent (None: no report)."))

    listeners: tuple[Listener, ...] = ()
    connectors: tuple[Connector, ...] = ()
    work_pool: str = "process"
    gateway_url: str | None = Field(default="http://127.0.0.1:4280",
                                    description="The webhook gateway; None: not deployed.")
    smtp_relay: str | None = Field(default=None, description="host:port of the SMTP relay.")

    key_high_percent: float = Field(default=80.0, gt=0, lt=100)
    key_critical_percent: float = Field(default=95.0, gt=0, le=100)

    backup_dir: str | None = None
    backup_pattern: str = "*"
    backup_max_age_hours: float = Field(default=26.0, gt=0)

    schedule_late_minutes: float = Field(default=10.0, ge=0)
    schedule_stuck_minutes: float = Field(default=120.0, gt=0)
    schedule_lookback_hours: float = Field(default=2.0, gt=0, le=168)

    @field_validator("disk_mounts")
    @classmethod
    def _mounts(cls, mounts: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for mount in mounts:
            if "\x00" in mount or len(mount) > 4096:
                raise ValueError("a mount path holds a NUL byte or is over 4096 characters")
            path = PurePosixPath(mount)
            if not path.is_absolute() or ".." in path.parts:
                raise ValueError(f"mount {mount[:60]!r} must be an absolute path without '..'")
            out.append(str(path))
        return tuple(dict.fromkeys(out))

    @field_validator("smtp_relay")
    @classmethod
    def _relay(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"smtp_relay {v[:60]!r} must be host:port")
        return f"{check_host(host)}:{int(port)}"

    @field_validator("gateway_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "@" in urlsplit(v).netloc:
            raise ValueError("gateway_url must not carry credentials (user:password@)")
        if not re.match(r"^https?://[^\s/@]+(/[^\s]*)?$", v):
            raise ValueError(f"{v[:60]!r} is not an http(s) URL")
        return v

    @field_validator("backup_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if "/" in v or "\x00" in v or ".." in v or len(v) > 200:
            raise ValueError("backup_pattern is a file-name pattern: no '/', '..' or NUL")
        return v

    @field_validator("backup_dir")
    @classmethod
    def _backup_dir(cls, v: str | None) -> str | None:
        if v is not None and (not PurePosixPath(v).is_absolute() or "\x00" in v):
            raise ValueError("backup_dir must be an absolute path")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> MonitorSettings:
        if self.cpu_high >= self.cpu_critical or self.memory_high >= self.memory_critical:
            raise ValueError("the high level must be under the critical level")
        if not self.disk_low > self.disk_medium > self.disk_high:
            raise ValueError("disk levels must be low > medium > high (free %)")
        if self.key_high_percent >= self.key_critical_percent:
            raise ValueError("key_high_percent must be under key_critical_percent")
        for kind, items in (("listener", self.listeners), ("connector", self.connectors)):
            names = [item.name for item in items]
            if len(names) != len(set(names)):
                raise ValueError(f"{kind} names must be unique")
        return self
