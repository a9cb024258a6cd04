"""Purge and retention: the data archiver, log retention, warehouse purge and conciliation,
idle session deletion and tenant clean (seeds 000 and 001).

- :mod:`.settings`: how long rows are kept (the Data retention block, then system
  parameters ``logretentiondays[.<tenant>]`` and ``retention.<setting>``).
- :mod:`.engine`: expired rows moved in bounded batches to compressed, checksummed archive
  files (never deleted without being archived; the audit log only by sealed block), the
  warehouse purged after its retention, archive and store conciliated, idle sessions closed.
- :mod:`.tenants`: soft-deleted tenants' data deleted after their grace period.

Errors: :class:`RetentionError`; the audit log refusing to be moved raises
:class:`pamflow.audit_seal.SealError`.
"""

from .engine import (
    ALL_DATASETS,
    AUDIT,
    DATA,
    DATASETS,
    LOGS,
    ConciliationResult,
    DatasetResult,
    Discrepancy,
    IdleClosed,
    WarehouseResult,
    archive_expired,
    close_idle_sessions,
    conciliate,
    purge_warehouse,
    remove_orphans,
    tenant_names,
)
from .settings import RetentionError, RetentionSettings, with_parameters
from .tenants import TenantCleaned, clean_tenants, remove_tenant, restore_tenant

LOG_DATASETS = tuple(n for n, d in DATASETS.items() if d.kind == LOGS)
DATA_DATASETS = (*(n for n, d in DATASETS.items() if d.kind == DATA), AUDIT)

__all__ = ["ALL_DATASETS", "AUDIT", "DATASETS", "DATA_DATASETS", "LOG_DATASETS",
           "ConciliationResult", "DatasetResult", "Discrepancy", "IdleClosed", "RetentionError",
           "RetentionSettings", "TenantCleaned", "WarehouseResult", "archive_expired",
           "clean_tenants", "close_idle_sessions", "conciliate", "purge_warehouse",
           "remove_orphans", "remove_tenant", "restore_tenant", "tenant_names", "with_parameters"]
