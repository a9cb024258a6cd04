"""Retention settings: the Data retention block's values, overridden by system parameters.

System parameters (``pamflow param`` / the store's ``system_parameter`` table):

- ``logretentiondays``: days a tenant's logs (sessions and their events, finished
  operations) are kept; ``logretentiondays.<tenant>`` for one tenant (logretentionjob).
- ``retention.<setting>`` for any other setting below (``retention.audit_log_days`` …).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from sqlmodel import Session, col, select

from ..config import data_dir
from ..errors import PamflowError
from ..models import SystemParameter

MAX_DAYS = 36_500
MAX_BATCH = 10_000


class RetentionError(PamflowError):
    """A retention setting is invalid, or a purge was refused."""


@dataclass(frozen=True)
class RetentionSettings:
    """How long each kind of row is kept, and how purges run."""

    archive_dir: Path = field(default_factory=lambda: data_dir() / "archive")
    batch_size: int = 1000  # rows per transaction
    log_retention_days: int = 90  # a tenant's logs (logretentiondays)
    tenant_log_retention_days: dict[str, int] = field(default_factory=dict)
    audit_log_days: int = 365  # audit rows, moved to the archive by sealed block
    notification_days: int = 90  # sent or failed notifications
    webhook_delivery_days: int = 30  # delivered or dead webhook outbox rows
    warehouse_days: int = 1825  # archive files are deleted this long after archiving
    audit_warehouse_days: int = 0  # audit archive files: 0 = kept forever
    tenant_grace_days: int = 60  # a soft-deleted tenant's data is deleted after this
    idle_session_minutes: int = 30  # an active session without activity is closed
    orphan_grace_s: int = 3600  # an archive file with no record this old is removed

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise RetentionError(f"batch_size must be between 1 and {MAX_BATCH}")
        for name in ("log_retention_days", "audit_log_days", "notification_days",
                     "webhook_delivery_days", "warehouse_days", "idle_session_minutes"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_DAYS * 1440:
                raise RetentionError(f"{name} must be a positive whole number, not {value!r}")
        for name in ("audit_warehouse_days", "tenant_grace_days", "orphan_grace_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise RetentionError(f"{name} must be zero or more, not {value!r}")
        for tenant, days in self.tenant_log_retention_days.items():
            if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
                raise RetentionError(f"logretentiondays.{tenant} must be 1-{MAX_DAYS} days")
        if not Path(self.archive_dir).is_absolute():
            raise RetentionError(f"the archive directory must be an absolute path, not "
                                 f"{str(self.archive_dir)[:200]!r}")

    def log_days(self, tenant: str) -> int:
        return self.tenant_log_retention_days.get(tenant, self.log_retention_days)

    def public(self) -> dict:
        """The settings for an artifact or ``--json`` (no secret in them)."""
        return {f.name: (str(getattr(self, f.name)) if f.name == "archive_dir"
                         else getattr(self, f.name)) for f in fields(self)}


_INT_SETTINGS = {f.name for f in fields(RetentionSettings)} - {"archive_dir",
                                                                  "tenant_log_retention_days"}


def _int(key: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise RetentionError(f"system parameter {key} must be a whole number, not "
                             f"{text[:40]!r}") from None


def with_parameters(db: Session, base: RetentionSettings | None = None) -> RetentionSettings:
    """``base`` (the block's values, or the defaults) with the system parameters applied."""
    base = base or RetentionSettings()
    changes: dict = {}
    per_tenant = dict(base.tenant_log_retention_days)
    rows = db.exec(select(SystemParameter).where(
        (col(SystemParameter.key) == "logretentiondays")
        | col(SystemParameter.key).startswith("logretentiondays.")
        | col(SystemParameter.key).startswith("retention."))).all()
    for row in rows:
        if row.key == "logretentiondays":
            changes["log_retention_days"] = _int(row.key, row.value)
        elif row.key.startswith("logretentiondays."):
            per_tenant[row.key.split(".", 1)[1]] = _int(row.key, row.value)
        else:
            name = row.key.split(".", 1)[1]
            if name == "archive_dir":
                changes[name] = Path(row.value.strip())
            elif name in _INT_SETTINGS:
                changes[name] = _int(row.key, row.value)
            else:
                raise RetentionError(f"system parameter {row.key[:80]!r} is not a retention "
                                     f"setting (known: {', '.join(sorted(_INT_SETTINGS))})")
    return replace(base, tenant_log_retention_days=per_tenant, **changes)
