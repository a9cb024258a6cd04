"""pamflow's Prefect tasks.

In a flow run, pamflow's own loggers report at ``PAMFLOW_LOG_LEVEL`` (INFO by default);
with ``PREFECT_LOGGING_EXTRA_LOGGERS=pamflow`` (set by ``pamflow up`` for its worker) their
records reach the flow run's logs in the Prefect UI.
"""

import logging
import os

_pamflow_log = logging.getLogger("pamflow")
if _pamflow_log.level == logging.NOTSET:
    _pamflow_log.setLevel(os.environ.get("PAMFLOW_LOG_LEVEL", "INFO").upper())
