"""System monitors: the robots that keep the platform itself healthy (seeds 000, 002 Appendix I, 003).

- ``usage``: CPU and memory, high at 70 %, critical at 90 %, sustained over a window
  (10 minutes) measured from samples kept between runs; one alert per episode and a
  "back to normal" when it ends.
- ``disk``: free space under 30/20/10 % per configured mount, once per threshold crossing.
- ``listeners``: TCP listeners and the platform's services in the states of Appendix I.
- ``keys``, ``backup``, ``schedule``: primary keys near their type's maximum, backups
  configured and fresh, robots whose runs are late, missing, stuck Running or crashed.
- ``tunnels``: connectors' tunnels failed without a heartbeat within their interval.
- ``alarms``: alarm definitions open and close alarms; closed ones go after six months.
- ``maintenance``: maintenance windows put devices in and out of maintenance mode.

Each monitor keeps its state in the store (``pamflow.models.MonitorState``), so an alert
is raised once per episode or crossing however often it runs, queues its catalogue
notification and writes the audit log in the same transaction. No Prefect here: the
Prefect layer (``tasks/monitors.py``) passes in the settings and, for the schedule
monitor, what the Prefect API answered.
"""

from __future__ import annotations

from ..errors import PamflowError


class MonitorError(PamflowError):
    """A monitor could not do its check (a setting it cannot use, a source it cannot read)."""


class SettingsError(MonitorError, ValueError):
    """A monitor setting is out of its range or unsafe (a relative mount, a bad port)."""


__all__ = ["MonitorError", "SettingsError"]
