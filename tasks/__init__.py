"""pamflow's Prefect tasks.

In a flow run, pamflow's own loggers report at ``PAMFLOW_LOG_LEVEL`` (INFO by default);
with ``PREFECT_LOGGING_EXTRA_LOGGERS=pamflow`` (set by ``pamflow up`` for its worker) their
records reach the flow run's logs in the Prefect UI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

_pamflow_log = logging.getLogger("pamflow")
if _pamflow_log.level == logging.NOTSET:
    _pamflow_log.setLevel(os.environ.get("PAMFLOW_LOG_LEVEL", "INFO").upper())


def ran_sync(result: _T | Coroutine[Any, Any, _T], what: str) -> _T:
    """The value of a Prefect call that picks its sync or async version by context.

    Prefect (``async_dispatch``) runs the synchronous version, and returns its value, when
    called outside a running event loop, as the synchronous flows and tasks here are; it
    answers a coroutine only inside one. Such a coroutine is closed and refused with an
    error naming the call, instead of being passed on as a value.
    """
    if isinstance(result, Coroutine):
        result.close()
        raise RuntimeError(f"{what} was called inside a running event loop: Prefect returned a "
                           "coroutine instead of its value")
    return result
