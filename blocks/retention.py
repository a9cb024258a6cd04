"""Data retention settings as a Prefect block (Blocks > Data retention), edited in the UI.

The purge robots read the block named ``default`` (or the one their deployment names),
then apply pamflow's system parameters over it: ``logretentiondays`` and
``logretentiondays.<tenant>`` (per tenant, as the job scheduler's logretentionjob says) and
``retention.<setting>``. Only durations and a directory live here, never a secret.
Without a Prefect API (the CLI on a host with no server) the defaults are used.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.purge.settings import MAX_BATCH, RetentionSettings


class RetentionBlock(Block):
    """How long rows, archives and removed tenants are kept, and the purge batch size."""

    _block_type_name = "Data retention"
    _block_type_slug = "pamflow-data-retention"
    _description = ("pamflow: how long logs, notifications, webhook deliveries, the audit log "
                    "and archive files are kept; batch size; tenant grace period.")

    archive_dir: str | None = Field(default=None, description="Absolute directory of archive "
                                    "files (default: <PAMFLOW_HOME>/archive).")
    batch_size: int = Field(default=1000, ge=1, le=MAX_BATCH,
                            description="Rows per transaction (writers wait at most one batch).")
    log_retention_days: int = Field(default=90, ge=1, description="A tenant's session and "
                                    "operation logs (system parameter logretentiondays wins).")
    audit_log_days: int = Field(default=365, ge=1, description="Audit rows older than this "
                                "are moved to the archive, by sealed block only.")
    notification_days: int = Field(default=90, ge=1)
    webhook_delivery_days: int = Field(default=30, ge=1)
    warehouse_days: int = Field(default=1825, ge=1,
                                description="Archive files are deleted this long after.")
    audit_warehouse_days: int = Field(default=0, ge=0,
                                      description="Audit archive files: 0 keeps them forever.")
    tenant_grace_days: int = Field(default=60, ge=0, description="A removed tenant's data is "
                                   "deleted this long after its removal (two months).")
    idle_session_minutes: int = Field(default=30, ge=1)

    def to_settings(self) -> RetentionSettings:
        values = self.model_dump(exclude={"archive_dir", "block_type_slug"})
        values = {k: v for k, v in values.items() if k in RetentionSettings.__dataclass_fields__}
        if self.archive_dir:
            values["archive_dir"] = Path(self.archive_dir)
        return RetentionSettings(**values)


def load_retention_block(name: str = "default") -> RetentionSettings | None:
    """The settings saved as block ``name``, or None (no such block, or no Prefect API)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # never start an ephemeral server just to ask
        return None
    try:
        loaded = RetentionBlock.load(name, validate=True)
        if isinstance(loaded, Coroutine):
            loaded.close()
            return None
    except ValueError:  # no block of that name
        return None
    return loaded.to_settings()
