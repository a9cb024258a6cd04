"""Cloud device import: AWS, GCP and Azure instances as devices of a tenant.

The settings of each cloud account live in a Prefect block (``blocks/cloud_accounts.py``),
its secrets in a named vault entry (:mod:`pamflow.vault_entries`). The SDKs are imported
only by the functions that call them. See :mod:`pamflow.cloud.sync` for what a run writes.
"""

from .model import (
    PROVIDERS,
    Change,
    CloudAccount,
    CloudError,
    CloudInstance,
    ImportResult,
    Rejected,
)
from .sync import import_account, last_import, list_account, write_devices

__all__ = [
    "PROVIDERS",
    "Change",
    "CloudAccount",
    "CloudError",
    "CloudInstance",
    "ImportResult",
    "Rejected",
    "import_account",
    "last_import",
    "list_account",
    "write_devices",
]
