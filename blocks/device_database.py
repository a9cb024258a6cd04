"""An external device database as a Prefect block (Blocks > Device database): a
SQLAlchemy URL and a read-only query whose rows become devices.

The URL carries no password (one that does is refused): the password lives in pamflow's
vault, as the credential ``password_username`` (default: the URL's user) of the device
``password_device``. Only PostgreSQL and SQLite (a file of the upload directory) are
accepted, because read-only is enforced for them; the query must be one SELECT.
"""

from __future__ import annotations

import re

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.directory import DatabaseSettings

BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class DeviceDatabaseBlock(Block):
    """Which database, which query, which result columns mean what."""

    _block_type_name = "Device database"
    _block_type_slug = "pamflow-device-database"
    _description = ("pamflow: an external SQL database whose query (read-only) lists devices. "
                    "The password is a vault reference, never stored here.")

    url: str = Field(description="postgresql://user@host:5432/cmdb or sqlite:///inventory.db "
                                 "(a file of the upload directory). No password here.")
    query: str = Field(description="One SELECT returning the mapped columns.")
    tenant: str = Field(default="default")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Field → result column: external_id, name, address "
                                          "(defaults: same names), platform, site, ports, "
                                          "operating_system.")
    password_device: str | None = Field(default=None, description="Vault reference: the device "
                                                                  "holding the password.")
    password_username: str | None = Field(default=None, description="Vault reference: the "
                                          "credential's username (default: the URL's user).")
    default_platform: str = "linux"
    max_rows: int = Field(default=100_000, ge=1, le=10_000_000)
    timeout: float = Field(default=60.0, gt=0, le=3600)

    def to_settings(self, name: str) -> DatabaseSettings:
        return DatabaseSettings(name=name, url=self.url, query=self.query, tenant=self.tenant,
                                columns=dict(self.columns), password_device=self.password_device,
                                password_username=self.password_username,
                                default_platform=self.default_platform, max_rows=self.max_rows,
                                timeout=self.timeout).check()


def load_device_database(name: str) -> DatabaseSettings:
    """The settings saved as device database block ``name``; DirectorySettingsError when
    there is no such block, naming what to do."""
    from blocks.ldap_directory import load_settings_block

    return load_settings_block(DeviceDatabaseBlock, "device database", "Device database", name)
