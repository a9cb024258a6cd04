"""pamflow's webhook gateway: signed calls from other systems become Prefect events.

``POST /hooks/{source}`` is authenticated with the source's HMAC secret (see
:mod:`pamflow.webhooks.signing`), validated against the event's schema
(:mod:`pamflow.webhooks.schemas`), written to the outbox in the store and answered 202;
the forwarder (:mod:`pamflow.webhooks.outbox`) posts it to ``{PREFECT_API_URL}/events``,
where deployment triggers in ``prefect.yaml`` start the robots. See docs/events.md.
"""

from .schemas import EVENT_SCHEMAS, PayloadError, validate_payload
from .signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signed_headers,
)

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_SCHEMAS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "PayloadError",
    "sign",
    "signed_headers",
    "validate_payload",
]
