"""Housekeeping of Prefect's own records: flow runs that found nothing to do.

A robot run that found nothing to do is tagged ``nothing-to-do`` (``mark_nothing_to_do``,
called by the robots' reports). The ``prune-idle-runs`` duty (run hourly by the operation
executor's service instance, ``pamflow.operations.duties``) deletes those runs, and runs
cancelled before they started (a second instance refused by a CANCEL_NEW concurrency
limit), once they are older than ``PAMFLOW_IDLE_RUN_RETENTION_HOURS`` (default 24; ``0``
keeps them forever). Runs that did work are never pruned here.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from pamflow.operations import duties

log = logging.getLogger(__name__)

IDLE_TAG = "nothing-to-do"
DEFAULT_RETENTION_HOURS = 24.0
PRUNE_BATCH = 200  # the API's page limit


def retention() -> timedelta | None:
    """How long idle runs are kept; None when pruning is off."""
    raw = os.environ.get("PAMFLOW_IDLE_RUN_RETENTION_HOURS")
    try:
        hours = float(raw) if raw else DEFAULT_RETENTION_HOURS
    except ValueError:
        hours = DEFAULT_RETENTION_HOURS
    return timedelta(hours=hours) if hours > 0 else None


def mark_nothing_to_do() -> bool:
    """Tag the current flow run ``nothing-to-do`` (no-op outside a flow run)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return False
    try:
        with get_client(sync_client=True) as client:
            tags = sorted({*(ctx.flow_run.tags or []), IDLE_TAG})
            client.update_flow_run(ctx.flow_run.id, tags=tags)
        return True
    except Exception as exc:  # noqa: BLE001 - a tag is not worth failing the robot
        log.warning("could not tag the flow run %s: %s", IDLE_TAG, exc)
        return False


def prune_idle_runs(_engine: Engine | None = None, *, now: datetime | None = None) -> list[str]:
    """Delete idle flow runs older than the retention; returns the deleted runs' names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    keep = retention()
    if keep is None:
        return []
    from prefect.types import DateTime

    cutoff = DateTime.instance((now or datetime.now(UTC)) - keep)
    idle = FlowRunFilter(tags=FlowRunFilterTags(all_=[IDLE_TAG]),
                         state=FlowRunFilterState(type=FlowRunFilterStateType(
                             any_=[StateType.COMPLETED, StateType.CANCELLED])),
                         end_time=FlowRunFilterEndTime(before_=cutoff))
    refused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                                any_=[StateType.CANCELLED])),
                            start_time=FlowRunFilterStartTime(is_null_=True),
                            expected_start_time=FlowRunFilterExpectedStartTime(before_=cutoff))
    deleted: list[str] = []
    with get_client(sync_client=True) as client:
        for flt in (idle, refused):
            for run in client.read_flow_runs(flow_run_filter=flt, limit=PRUNE_BATCH):
                try:
                    client.delete_flow_run(run.id)
                except Exception as exc:  # noqa: BLE001 - gone already, or busy: next pass
                    log.info("could not delete flow run %s: %s", run.name, exc)
                    continue
                deleted.append(run.name)
    if deleted:
        log.info("pruned %d idle flow run(s) older than %s", len(deleted), keep)
    return deleted


duties.register("prune-idle-runs", 3600, prune_idle_runs)
