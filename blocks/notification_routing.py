"""Notification routing and the SMTP server as Prefect blocks, edited in the UI
(Blocks > Notification routing, Blocks > SMTP server).

*Notification routing* holds routes (who gets which types or families, on which channel,
at once or in the daily digest, per tenant); the email sender uses the routes of the block
named ``default`` (its ``routing_block`` parameter) together with the routes stored by
``pamflow notifications routes add``. A route that fails the checks is refused when the
block is saved (and skipped, with a warning, if the block was written around the checks).

*SMTP server* holds where and how mail goes out. No secret lives in it: the password is
the name of a notification secret sealed by pamflow's vault (``password_secret``; set it
with ``pamflow notifications secret set NAME``), because Prefect's OSS API hands block
secrets (``SecretStr`` fields included) to any API caller.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, field_validator

from pamflow.notifications.channels import SmtpSettings
from pamflow.notifications.routing import Route, RouteError, validate

log = logging.getLogger(__name__)


class RouteSpec(BaseModel):
    tenant: str = Field(default="default", max_length=64)
    match: str = Field(description="A notification type, a family, or * for everything.",
                       max_length=255)
    recipient: str = Field(description="user:NAME, group:NAME or an address (email); "
                                       "udp://host:port or tcp://host:port (syslog); an https:// "
                                       "URL (webhook).", max_length=2048)
    channel: Literal["email", "syslog", "webhook"] = "email"
    mode: Literal["immediate", "digest"] = "immediate"
    min_severity: Literal["info", "notice", "warning", "critical"] = "info"
    secret_ref: str | None = Field(default=None, description="webhook: the notification secret "
                                                             "that signs the calls")

    def to_route(self) -> Route:
        return Route(match=self.match, recipient=self.recipient, channel=self.channel,
                     mode=self.mode, min_severity=self.min_severity, tenant=self.tenant,
                     secret_ref=self.secret_ref, source="block")


class NotificationRoutingBlock(Block):
    """Who gets which notifications, on which channel, at once or in the daily digest."""

    _block_type_name = "Notification routing"
    _block_type_slug = "pamflow-notification-routing"
    _description = "pamflow: which users or groups get which notification types or families."

    routes: list[RouteSpec] = Field(default_factory=list, max_length=10000)

    @field_validator("routes")
    @classmethod
    def _valid(cls, routes: list[RouteSpec]) -> list[RouteSpec]:
        for i, spec in enumerate(routes):
            try:
                validate(spec.to_route())
            except RouteError as exc:
                raise ValueError(f"route {i + 1}: {exc}") from None
        return routes

    def to_routes(self) -> list[Route]:
        return [s.to_route() for s in self.routes]


class SmtpServerBlock(Block):
    """Where mail goes out: host, port, TLS mode, sender address, login."""

    _block_type_name = "SMTP server"
    _block_type_slug = "pamflow-smtp-server"
    _description = ("pamflow: the SMTP server the email sender uses (STARTTLS or TLS with "
                    "verification; the password is a vault-sealed notification secret).")

    host: str = Field(max_length=255)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "plain"] = Field(
        default="starttls", description="starttls (port 587), tls (implicit, port 465), or plain "
                                        "(cleartext: only with allow_cleartext, warned on each use)")
    allow_cleartext: bool = False
    from_address: str = Field(default="pamflow@localhost", max_length=320)
    username: str | None = Field(default=None, max_length=320)
    password_secret: str | None = Field(default=None, description="name of the notification "
                                        "secret holding the password (`pamflow notifications "
                                        "secret set NAME`)")
    ca_file: str | None = Field(default=None, description="PEM file of a private CA to trust "
                                                          "(the system's trust store otherwise)")
    timeout: float = Field(default=30.0, gt=0, le=600)

    def to_settings(self, password: str | None) -> SmtpSettings:
        return SmtpSettings(host=self.host, port=self.port, security=self.security,
                            from_address=self.from_address, username=self.username,
                            password=password, ca_file=self.ca_file,
                            allow_cleartext=self.allow_cleartext, timeout=self.timeout)


def _load(cls: type[Block], name: str) -> Block | None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # no server configured: never start an ephemeral one
        return None
    try:
        loaded = cls.load(name)
    except ValueError:  # no block of that name
        return None
    if isinstance(loaded, Coroutine):
        loaded.close()
        raise RuntimeError(f"{cls.__name__} cannot be loaded inside an event loop")
    return loaded


def load_routes(name: str = "default") -> list[Route]:
    """The routes of block ``name`` (none when it does not exist); invalid ones skipped."""
    from pamflow.notifications.routing import validate

    try:
        block = _load(NotificationRoutingBlock, name)
    except Exception as exc:  # noqa: BLE001 - a block written around the checks: say it, go on
        log.warning("notification routing block %r cannot be read: %s", name, exc)
        return []
    if not isinstance(block, NotificationRoutingBlock):
        return []
    out = []
    for route in block.to_routes():
        try:
            out.append(validate(route))
        except RouteError as exc:
            log.warning("notification routing block %r: route skipped: %s", name, exc)
    return out


def load_smtp(name: str = "default") -> SmtpServerBlock | None:
    block = _load(SmtpServerBlock, name)
    return block if isinstance(block, SmtpServerBlock) else None
