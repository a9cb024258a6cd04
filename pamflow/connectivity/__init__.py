"""Connectivity test ("Test all devices registered connections"): the domain, no Prefect.

The prober (sockets, epoll, fork) is ``.prober``; the rules and the store are ``.rules``.

``probe(targets)`` opens a TCP connection to every configured port of every target
concurrently (asyncio, raw non-blocking sockets, a per-endpoint timeout, bounded
concurrency) and reads the SSH banner where the port is SSH. ``check_devices(engine,
first_id, last_id)`` does one batch end to end: load the devices, probe them, write the
results to the store and queue the notifications.

The rules (what a PAM engineer expects):

- **Which devices.** Active devices with at least one configured port (``Device.ports``).
  Inactive devices are neither probed nor written. A device with no port has no registered
  connection to test: it is counted as "no ports" in the run's report and its row is left
  as it is. Malformed port entries (not an integer in 1..65535) are ignored and named in
  the device's ``connectivity_detail``; they lose nothing else.
- **A port answers** when a TCP connection to ``address:port`` completes within
  ``connect_timeout``. Refused, timed out, network unreachable, a name that does not
  resolve: the port does not answer, and the reason is recorded.
- **SSH ports** are port 22 and the ports named by the device's settings ``ssh_port`` (an
  integer or a list). Their banner (the ``SSH-`` line, RFC 4253 4.2) is read within
  ``banner_timeout`` and recorded in ``connectivity_detail``. Any other port that has
  already sent ``SSH-`` when the connection completes is recorded the same way (a free,
  non-blocking look; the prober never waits on a non-SSH port). An SSH port that accepts
  and closes without a banner, or stays silent, still *answers* (the host and its TCP
  stack are there; sshd does this when it is at ``MaxStartups``); the detail says so.
- **Reachable** when ANY configured port answers (the default: the device is on the
  network and the platform can reach it through at least one of its registered
  connections; ports that did not answer are named in the detail). A device whose settings
  say ``connectivity_rule: "all"`` is reachable only when every configured port answers.
- **State changes.** reachable -> unreachable queues "Lost of connectivity"; unreachable ->
  reachable queues "Connectivity restored"; each also writes an audit row
  (``connectivity.lost`` / ``connectivity.restored``). Both are in the same transaction as
  the state change, and the change is a conditional UPDATE (``WHERE connectivity = old``),
  so two overlapping runs never notify the same change twice. The first check of a device
  (``unknown`` -> either) sets the state silently: there was nothing to lose or restore
  (the unreachable ones are in the run's table of unreachable devices). A device in
  maintenance mode is probed and recorded, and its changes are audited, but no
  notification is queued (downtime is expected).
- **Local failures** (this machine ran out of file descriptors, say) say nothing about
  the device: such a device is "inconclusive", counted in the report and not written.
- **What is written.** Every probed device gets ``connectivity``, ``connectivity_detail``
  and ``last_checked_at``; ``last_seen_at`` only when reachable; ``updated_at`` only on a
  state change. Unchanged devices are written with one executemany UPDATE per batch.
"""

from .prober import (
    LOCAL,
    OPEN,
    REFUSED,
    TIMEOUT,
    DeviceResult,
    PortResult,
    Target,
    probe,
    raise_open_files_limit,
    verdict,
)
from .rules import (
    ACTOR,
    LOST,
    RESTORED,
    BatchesFailed,
    BatchReport,
    RunSummary,
    check_devices,
    load_targets,
    plan_batches,
    record_results,
    summarise,
    target_of,
    unreachable_row,
)

__all__ = ["ACTOR", "LOCAL", "LOST", "OPEN", "REFUSED", "RESTORED", "TIMEOUT", "BatchesFailed", "BatchReport",
           "DeviceResult", "PortResult", "Target", "check_devices", "load_targets",
           "plan_batches", "probe", "raise_open_files_limit", "record_results", "RunSummary",
           "summarise", "target_of", "unreachable_row", "verdict"]
