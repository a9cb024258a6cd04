"""Directory robots: LDAP/AD synchronization (users and groups into pamflow's users and
access groups), access groups processing (granted access compiled per user), LDAP device
import (computers into devices) and device database import (devices from an external SQL
database, read-only). No Prefect here: flows/directory.py composes these.

- :mod:`.settings` — a directory's settings (URL, TLS, bases, filters, attribute mapping).
- :mod:`.ldap` — a verified TLS connection and paged searches.
- :mod:`.records` — entries to records, strictly (bad UTF-8, control characters, oversized).
- :mod:`.sync` — users and groups: read everything first, then write; incremental by
  ``modifyTimestamp``/``uSNChanged``; users who left are disabled, never deleted.
- :mod:`.access` — access groups processing.
- :mod:`.devices`, :mod:`.computers`, :mod:`.database` — device imports.
- :mod:`.secrets` — the bind/database password, read from the vault by reference.
"""

from .access import AccessResult, compile_access
from .computers import import_computers
from .database import DatabaseSettings, check_query, import_database
from .devices import DeviceImportResult
from .errors import (
    BindSecretMissing,
    DeviceDatabaseError,
    DirectoryBindRefused,
    DirectoryError,
    DirectoryNotConfigured,
    DirectorySearchFailed,
    DirectorySettingsError,
    DirectoryUnavailable,
)
from .records import Rejection
from .secrets import bind_password, database_password, vault_secret
from .settings import DirectorySettings
from .sync import DirectoryRead, SyncResult, apply_read, read_directory

__all__ = [
    "AccessResult",
    "BindSecretMissing",
    "DatabaseSettings",
    "DeviceDatabaseError",
    "DeviceImportResult",
    "DirectoryBindRefused",
    "DirectoryError",
    "DirectoryNotConfigured",
    "DirectoryRead",
    "DirectorySearchFailed",
    "DirectorySettings",
    "DirectorySettingsError",
    "DirectoryUnavailable",
    "Rejection",
    "SyncResult",
    "apply_read",
    "bind_password",
    "database_password",
    "check_query",
    "compile_access",
    "import_computers",
    "import_database",
    "read_directory",
    "vault_secret",
]
