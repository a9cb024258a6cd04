"""The syslog receiver as a Prefect block (Blocks > Syslog target), edited in the UI.

The configuration auditor sends its lines to the block named by its ``syslog_block``
parameter ("default"). Nothing secret lives here. TLS with the receiver's certificate
verified is the default; UDP and TCP are cleartext and need ``allow_cleartext``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.syslog import SyslogTarget


class SyslogTargetBlock(Block):
    """Where pamflow sends syslog lines (RFC 5424 over TLS, TCP or UDP)."""

    _block_type_name = "Syslog target"
    _block_type_slug = "pamflow-syslog-target"
    _description = "pamflow: the syslog receiver for configuration-change lines (RFC 5424)."

    host: str = Field(description="Receiver host name or address.")
    port: int = Field(default=6514, ge=1, le=65535, description="6514 for TLS, 514 for UDP/TCP.")
    protocol: Literal["tls", "tcp", "udp"] = "tls"
    allow_cleartext: bool = Field(default=False, description="Permit tcp/udp (cleartext).")
    facility: str = "local0"
    app_name: str = "pamflow"
    hostname: str | None = Field(default=None, description="HOSTNAME field; this machine's "
                                                           "name when empty.")
    ca_file: str | None = Field(default=None, description="TLS: CA bundle that signs the "
                                                          "receiver's certificate.")
    verify: bool = Field(default=True, description="TLS: verify the receiver's certificate.")
    timeout: float = Field(default=5.0, gt=0, le=120)

    def to_target(self) -> SyslogTarget:
        target = SyslogTarget(host=self.host, port=self.port, protocol=self.protocol,
                              facility=self.facility, app_name=self.app_name,
                              hostname=self.hostname, allow_cleartext=self.allow_cleartext,
                              ca_file=self.ca_file, verify=self.verify, timeout=self.timeout)
        target.check()
        return target


def load_syslog_target(name: str) -> SyslogTarget | None:
    """The target saved as block ``name``; None when there is no such block."""
    from prefect.exceptions import ObjectNotFound

    try:
        loaded = SyslogTargetBlock.load(name, validate=True)
    except (ObjectNotFound, ValueError) as exc:
        if isinstance(exc, ValueError) and "Unable to find block document" not in str(exc):
            raise
        return None
    if isinstance(loaded, Coroutine):  # Prefect answers a coroutine inside a running event loop
        loaded.close()
        raise RuntimeError(f"syslog target block {name} cannot be loaded inside an event loop")
    return loaded.to_target()
