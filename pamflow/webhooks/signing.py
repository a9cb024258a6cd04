"""How a webhook call is signed (the sender's side and the gateway's check).

Headers of ``POST /hooks/{source}``:

========================  ===============================================================
``Content-Type``          ``application/json``
``X-Pamflow-Timestamp``   Unix time in whole seconds when the call was signed; refused
                          when more than 300 s away from the gateway's clock.
``X-Pamflow-Delivery``    The sender's unique id of this call, 1-128 of ``A-Z a-z 0-9 _ -
                          :``; a second call with the same id for the same source is a
                          replay (409), also after a gateway restart.
``X-Pamflow-Event``       The event within the source, e.g. ``uploaded`` for source
                          ``import`` gives the event ``pam.import.uploaded``.
``X-Pamflow-Signature``   ``sha256=`` + lowercase hex HMAC-SHA256, keyed with the
                          source's secret, of the signing string below.
========================  ===============================================================

Signing string (bytes)::

    f"{timestamp}.{delivery}.{event}.".encode() + raw_body

The delivery id and event are signed too, so a captured call cannot be re-sent under a
new delivery id or as another event.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid

TIMESTAMP_HEADER = "X-Pamflow-Timestamp"
DELIVERY_HEADER = "X-Pamflow-Delivery"
EVENT_HEADER = "X-Pamflow-Event"
SIGNATURE_HEADER = "X-Pamflow-Signature"
SIGNATURE_PREFIX = "sha256="

DELIVERY_RE = re.compile(r"[A-Za-z0-9_:\-]{1,128}")
EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
SOURCE_RE = re.compile(r"[a-z][a-z0-9_\-]{0,62}")
SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new source secret: 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signing_bytes(timestamp: str | int, delivery: str, event: str, body: bytes) -> bytes:
    return f"{timestamp}.{delivery}.{event}.".encode() + body


def sign(secret: str | bytes, timestamp: str | int, delivery: str, event: str, body: bytes) -> str:
    """The ``X-Pamflow-Signature`` value for a call."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, signing_bytes(timestamp, delivery, event, body), hashlib.sha256)
    return SIGNATURE_PREFIX + digest.hexdigest()


def signed_headers(secret: str, event: str, body: bytes, delivery: str | None = None,
                   timestamp: int | None = None) -> dict[str, str]:
    """Every header a sender needs (a fresh delivery id and the current time by default)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    delivery = delivery or uuid.uuid4().hex
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: delivery,
        EVENT_HEADER: event,
        SIGNATURE_HEADER: sign(secret, timestamp, delivery, event, body),
    }


def signature_matches(secrets_: list[bytes], message: bytes, provided: str) -> bool:
    """Constant-time check of ``provided`` against the HMAC under each candidate secret.

    Every candidate is computed and compared (no early exit), so the time taken does not
    say which secret, if any, matched.
    """
    provided_b = provided.encode("ascii", "replace")
    ok = False
    for key in secrets_:
        expected = (SIGNATURE_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()).encode()
        ok |= hmac.compare_digest(expected, provided_b)
    return ok
