"""Fault injection for the tests that prove no password is ever lost.

``checkpoint(point)`` is called by the rotation protocol right after each step is committed
(and by targets at a few points inside a change). With ``PAMFLOW_FAULT_AFTER_STEP=<point>``
the process SIGKILLs itself there (or stops itself with SIGSTOP when
``PAMFLOW_FAULT_ACTION=stop``, to play a stalled executor); in-process tests may instead
register a callable with ``on(point, fn)``. Without either, a checkpoint costs one dict
lookup and one environment lookup.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

FAULT_ENV = "PAMFLOW_FAULT_AFTER_STEP"
ACTION_ENV = "PAMFLOW_FAULT_ACTION"
_hooks: dict[str, Callable[[], None]] = {}


def checkpoint(point: str) -> None:
    """Run the fault registered for ``point``, if any (tests only)."""
    hook = _hooks.get(point)
    if hook is not None:
        hook()
    if os.environ.get(FAULT_ENV) != point:
        return
    action = os.environ.get(ACTION_ENV, "kill")
    log.warning("fault injection: %s process %d after %s", action, os.getpid(), point)
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def on(point: str, fn: Callable[[], None] | None) -> None:
    """Call ``fn`` at ``point`` (None removes it)."""
    if fn is None:
        _hooks.pop(point, None)
    else:
        _hooks[point] = fn


__all__ = ["ACTION_ENV", "FAULT_ENV", "checkpoint", "on"]
