"""The payload schema of each event the gateway accepts (one entry per event-driven robot).

A schema names the payload's fields and their JSON types; ``required`` fields must be
present, others may be. Unlisted fields are kept (a robot reads only what it needs), but
the payload must be a JSON object. Add an entry here, a row to docs/events.md and a
trigger to prefect.yaml together.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import PamflowError

MAX_DEPTH = 32  # objects and arrays nested in a payload, the payload itself counting as 1
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # what every store and Prefect's API hold exactly
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class PayloadError(PamflowError, ValueError):
    """The body does not fit its event's schema; the message is short and safe to return."""


class BodyError(PamflowError, ValueError):
    """The body is not strict JSON in UTF-8; the message is short and safe to return."""


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    required: bool = True
    non_empty: bool = False
    max_length: int | None = None


@dataclass(frozen=True)
class EventSchema:
    """Fields of an event's payload, and the robot its trigger starts."""

    robot: str
    fields: dict[str, Field] = field(default_factory=dict)
    description: str = ""


# Fields the gateway writes into every payload it accepts, replacing what the caller sent:
# a trigger may template them like required fields.
GATEWAY_FIELDS: dict[str, str] = {
    "tenant": "the tenant of the webhook source (`pamflow webhooks add-source NAME --tenant T`)",
}

EVENT_SCHEMAS: dict[str, EventSchema] = {
    "pam.import.uploaded": EventSchema(
        robot="batch-import-processing",
        fields={"path": Field(str, non_empty=True, max_length=4096)},
        description="A spreadsheet of devices and credentials was uploaded; `path` is its "
                    "location in the upload directory of the worker hosts (relative to it, or "
                    "absolute inside it); it is imported for the source's tenant.",
    ),
    "pam.operation.queued": EventSchema(
        robot="operation-executor",
        fields={"operation_id": Field(int)},
        description="An operation (change, verify, reconcile...) was queued; `operation_id` "
                    "is its row in the store.",
    ),
    "pam.mfa.requested": EventSchema(
        robot="mfa-token-mail",
        fields={"username": Field(str, non_empty=True, max_length=255)},
        description="Mail a one-time code to `username` (an active PAM user with an e-mail "
                    "address); it expires after 10 minutes and works once.",
    ),
    "pam.notification.queued": EventSchema(
        robot="email-sender",
        fields={},
        description="Notifications were queued (pamflow's robots emit it when their "
                    "transaction commits); the email sender starts and sends all queued "
                    "emails. No payload is needed.",
    ),
    "pam.reservation.requested": EventSchema(
        robot="password-reservation-request",
        fields={"credential_id": Field(int),
                "starts_at": Field(str, non_empty=True, max_length=64),
                "ends_at": Field(str, non_empty=True, max_length=64),
                "requested_by": Field(str, non_empty=True, max_length=255),
                "change_on_start": Field(bool, required=False),
                "change_on_end": Field(bool, required=False),
                "note": Field(str, required=False, max_length=1000)},
        description="Reserve a credential of the source's tenant for `requested_by` from "
                    "`starts_at` to `ends_at` (ISO 8601); the password changes when it starts "
                    "and when it ends unless `change_on_start` / `change_on_end` is false.",
    ),
}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               dict: "an object", list: "an array"}


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and expected is not bool and not (
            isinstance(expected, tuple) and bool in expected):
        return False  # JSON true is not an integer
    return isinstance(value, expected)


def validate_payload(event: str, payload: Any) -> dict:
    """``payload`` if it fits the schema of ``event``; else :class:`PayloadError`."""
    schema = EVENT_SCHEMAS.get(event)
    if schema is None:
        raise PayloadError(f"unknown event {event}")
    if not isinstance(payload, dict):
        raise PayloadError("payload must be a JSON object")
    for name, spec in schema.fields.items():
        if name not in payload:
            if spec.required:
                raise PayloadError(f"{name} is required")
            continue
        value = payload[name]
        if not _type_ok(value, spec.type):
            expected = spec.type if isinstance(spec.type, type) else spec.type[0]
            raise PayloadError(f"{name} must be {_TYPE_NAMES.get(expected, expected.__name__)}")
        if spec.non_empty and not value:
            raise PayloadError(f"{name} must not be empty")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise PayloadError(f"{name} is longer than {spec.max_length}")
    return payload


# ---- strict JSON ------------------------------------------------------------------------
# Python's json module accepts more than JSON (NaN, Infinity), keeps the last of duplicate
# keys, turns 1e400 into infinity, lets unpaired surrogates through and recurses once per
# nesting level. Each of those would reach the outbox and then fail (or be read differently)
# further on, so the gateway refuses them here, before anything is written.

def _no_constant(_name: str) -> Any:
    raise BodyError("JSON must not contain NaN or Infinity")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError("JSON number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # longer than any 64-bit integer; int() would also be slow on it
        raise BodyError("JSON number out of range")
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise BodyError("JSON number out of range")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = f": {key}" if _SAFE_KEY.fullmatch(key) else ""
                raise BodyError(f"duplicate key in JSON object{shown}")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=_finite_float,
                            parse_int=_bounded_int, parse_constant=_no_constant)
_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"


def _check_tree(value: Any, strings: bool) -> None:
    """Depth, and (``strings``) that every string and key encodes to UTF-8; iterative."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise BodyError(_DEEP)
            for key, child in item.items():
                if strings:
                    _check_string(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise BodyError(_DEEP)
            stack.extend((child, depth + 1) for child in item)
        elif strings and isinstance(item, str):
            _check_string(item)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError("JSON string with an unpaired surrogate") from None


def parse_body(body: bytes) -> Any:
    """The JSON value of ``body``, or :class:`BodyError` saying why it is refused.

    The body must be UTF-8 (no other encoding, no byte order mark), hold exactly one JSON
    value, nest at most ``MAX_DEPTH`` levels, use no NaN/Infinity, no number a 64-bit
    integer or a finite double cannot hold, no duplicate keys and no unpaired surrogates.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body is not UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise BodyError(_DEEP) from None
    except BodyError:
        raise
    except ValueError:
        raise BodyError("malformed JSON") from None
    # the walk is needed only when the body could nest that deep or escape a surrogate
    escapes = b"\\u" in body
    if escapes or body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_tree(value, strings=escapes)
    return value
