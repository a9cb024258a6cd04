"""The system monitors' thresholds, mounts, listeners and services, as a Prefect block edited
in the UI (Blocks > Monitor thresholds). The robots read the block named by their
``settings`` parameter ("default"); without it they use the seeds' figures (70 % / 90 %
over 10 minutes; free disk under 30, 20, 10 % of "/").

Only settings live here, never a secret: URLs and host:port pairs without credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine

from prefect.blocks.core import Block
from pydantic import ConfigDict

from pamflow.monitors.settings import MonitorSettings

log = logging.getLogger("pamflow.monitors")


class MonitorThresholdsBlock(Block, MonitorSettings):
    """CPU, memory and disk levels, the mounts and listeners watched, the platform's service
    endpoints, key, backup and schedule limits of the system monitors."""

    model_config = ConfigDict(extra="allow", frozen=False)

    _block_type_name = "Monitor thresholds"
    _block_type_slug = "pamflow-monitor-thresholds"
    _description = ("pamflow: the system monitors' levels (CPU, memory, disk, primary keys), "
                    "the mounts, listeners and services watched, backup and schedule limits.")

    def to_settings(self) -> MonitorSettings:
        return MonitorSettings.model_validate(self.model_dump(include=set(MonitorSettings.model_fields)))


def load_monitor_settings(name: str = "default") -> MonitorSettings:
    """The settings saved as block ``name``; the defaults when there is no such block.

    A block that exists but does not validate is an error: a monitor never runs on
    settings other than the ones configured.
    """
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # never start an ephemeral server just to answer
        return MonitorSettings()
    try:
        loaded = MonitorThresholdsBlock.load(name, validate=True)
    except (ObjectNotFound, ValueError) as exc:
        if isinstance(exc, ObjectNotFound) or "Unable to find block document" in str(exc):
            log.info("no monitor thresholds block named %r: the seeds' defaults apply", name)
            return MonitorSettings()
        raise
    if isinstance(loaded, Coroutine):
        loaded.close()
        raise RuntimeError(f"monitor thresholds block {name} cannot be loaded inside an event loop")
    return loaded.to_settings()
