"""The system monitors' thresholds, mounts, listeners and services, as a Prefect block edited
in the UI (Blocks > Monitor thresholds). The robots read the block named by their
``settings`` parameter ("default"); without it they use the seeds' figures (70 % / 90 %
over 10 minutes; free disk under 30, 20, 10 % of "/").

Only settings live here, never a secret: URLs and host:port pairs without credentials.
"""

from __future__ import annotations

import logging

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

    A block that exists but does not validate (edited through the API, say) is refused
    with ``SettingsError`` naming each bad field and why, without pydantic's echo of the
    input (a URL could carry a password): a monitor never runs on settings other than the
    ones saved.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from pydantic import ValidationError

    from pamflow.monitors import SettingsError

    if not PREFECT_API_URL.value():  # never start an ephemeral server just to answer
        return MonitorSettings()
    try:
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(
                name, block_type_slug=MonitorThresholdsBlock.get_block_type_slug())
    except ObjectNotFound:
        log.info("no monitor thresholds block named %r: the seeds' defaults apply", name)
        return MonitorSettings()
    data = {k: v for k, v in (document.data or {}).items() if not k.startswith("block_")}
    try:
        return MonitorSettings.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                            for e in exc.errors(include_input=False)[:10])
        raise SettingsError(f"monitor thresholds block {name!r} is not valid: {reasons}") from None
