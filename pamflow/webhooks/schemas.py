"""The payload schema of each event the gateway accepts (one entry per event-driven robot).

A schema names the payload's fields and their JSON types; ``required`` fields must be
present, others may be. Unlisted fields are kept (a robot reads only what it needs), but
the payload must be a JSON object. Add an entry here, a row to docs/events.md and a
trigger to prefect.yaml together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class PayloadError(ValueError):
    """The body does not fit its event's schema; the message is short and safe to return."""


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
