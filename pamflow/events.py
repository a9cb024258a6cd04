"""Prefect events from the domain, over Prefect's REST API (no Prefect import here).

``post_events`` sends events to ``POST {PREFECT_API_URL}/events`` with the API's
credentials from the environment (``PREFECT_API_AUTH_STRING`` or ``PREFECT_API_KEY``).
The webhook gateway's outbox and the operation queue's ``pam.operation.queued`` use it.
"""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:4200/api"


def prefect_api_url() -> str:
    """``PREFECT_API_URL``, else the local server ``pamflow up`` starts."""
    return (os.environ.get("PREFECT_API_URL") or DEFAULT_API_URL).rstrip("/")


def prefect_auth_headers() -> dict[str, str]:
    """The Authorization header for the Prefect API, when credentials are configured."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    if os.environ.get("PREFECT_API_KEY"):
        return {"Authorization": "Bearer " + os.environ["PREFECT_API_KEY"]}
    return {}


def event(name: str, resource: dict[str, str], payload: dict[str, Any],
          event_id: str | None = None, occurred: datetime | None = None) -> dict[str, Any]:
    """One event as Prefect's ``/events`` takes it."""
    return {"id": event_id or str(uuid.uuid4()),
            "occurred": (occurred or datetime.now(UTC)).isoformat(),
            "event": name, "resource": resource, "payload": payload}


def post_events(events: list[dict[str, Any]], api_url: str | None = None,
                timeout: float = 5.0) -> int:
    """POST ``events`` to Prefect; returns the HTTP status (raises ``httpx.HTTPError`` when
    Prefect cannot be reached)."""
    import httpx

    resp = httpx.post(f"{api_url or prefect_api_url()}/events", json=events, timeout=timeout,
                      headers=prefect_auth_headers())
    return resp.status_code


__all__ = ["DEFAULT_API_URL", "event", "post_events", "prefect_api_url", "prefect_auth_headers"]
