"""Password reservation tasks: making the reservation a ``pam.reservation.requested`` event
asks for (``pamflow.credentials.reservations`` wrapped for Prefect)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pamflow.credentials.reservations import Reservation


@task(name="request-password-reservation", cache_policy=NO_CACHE, persist_result=False)
def request_reservation(request: dict[str, Any]) -> Reservation:
    """Make the requested reservation (see ``reservations.from_request``: checked, refused
    for a credential outside the event's tenant or overlapping another reservation).

    Not retried: a retry after the reservation was made would only be refused as overlapping.
    """
    from pamflow.credentials.reservations import from_request
    from pamflow.db import store

    return from_request(store(), request, actor="robot:password-reservation")


__all__ = ["request_reservation"]
