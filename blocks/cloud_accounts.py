"""Cloud accounts as Prefect blocks, edited in the UI (Blocks > Cloud account).

One block per cloud account: the provider (AWS, GCP, Azure), where to look (regions,
zones, project, subscription), which instances (tag/label and state filters), which
address a device gets, the tenant its devices belong to and how often it is imported.
The cloud-device-import robot runs hourly and imports each enabled account whose last
complete import is at least ``every_hours`` old.

No secret lives here: anyone who can call Prefect's API can read a block. Credentials
are either the SDK's usual chain on the worker (environment, instance role, workload
identity) or a *named vault entry* of the same tenant (``pamflow vault entry-put NAME``),
referenced by name in ``vault_entry``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.cloud import CloudAccount, CloudError

BLOCK_TYPE_SLUG = "pamflow-cloud-account"


class CloudAccountBlock(Block):
    """A cloud account whose instances are imported as devices of a tenant (no secret here:
    credentials come from a named vault entry or the SDK's usual chain)."""

    _block_type_name = "Cloud account"
    _block_type_slug = BLOCK_TYPE_SLUG
    _description = ("pamflow: an AWS, GCP or Azure account whose instances the "
                    "cloud-device-import robot imports as devices.")

    provider: Literal["aws", "gcp", "azure"] = Field(description="aws, gcp or azure.")
    tenant: str = Field(default="default", description="The tenant the devices belong to.")
    enabled: bool = Field(default=True, description="Imported by the hourly robot.")
    every_hours: int = Field(default=24, ge=1, le=24 * 31,
                             description="Import this account every N hours.")
    regions: list[str] = Field(
        default_factory=list,
        description="AWS: regions (required). GCP: zones or regions (empty: all). "
                    "Azure: locations (empty: all).")
    project: str | None = Field(default=None, description="GCP: the project id.")
    subscription_id: str | None = Field(default=None, description="Azure: the subscription id.")
    tag_filters: dict[str, str] = Field(
        default_factory=dict,
        description="Only instances with these tags (AWS/Azure) or labels (GCP); value * = any.")
    states: list[str] = Field(
        default_factory=list,
        description="Only instances in these states (e.g. running, stopped); empty: all. An "
                    "instance leaving the filters is marked removed.")
    address: Literal["private", "public", "private-or-public", "public-or-private"] = Field(
        default="private", description="Which address a device gets.")
    credentials: Literal["sdk", "vault"] = Field(
        default="sdk", description="sdk: the SDK's usual chain on the worker; vault: the "
                                   "named vault entry below.")
    vault_entry: str | None = Field(default=None,
                                    description="Name of the vault entry holding the "
                                                "credentials (never the secret itself).")
    endpoint_url: str | None = Field(default=None,
                                     description="A private endpoint instead of the cloud's "
                                                 "public API (https); the worker's host must "
                                                 "list it in PAMFLOW_CLOUD_ENDPOINTS.")
    allow_cleartext: bool = Field(default=False,
                                  description="Allow an http:// endpoint (warned on each run).")
    ca_file: str | None = Field(default=None,
                                description="CA bundle for a private endpoint (TLS "
                                            "verification stays on).")
    page_size: int | None = Field(default=None, ge=1, le=1000, description="Page size asked of "
                                                                          "the API.")
    max_instances: int = Field(default=100_000, ge=1, description="Refuse to import more.")

    def to_account(self, name: str) -> CloudAccount:
        data = self.model_dump(include=set(CloudAccount.model_fields) - {"name"})
        return CloudAccount(name=name, **data)


def _sync(value: Any, what: str) -> Any:
    if isinstance(value, Coroutine):  # Prefect answers a coroutine inside a running event loop
        value.close()
        raise RuntimeError(f"{what} cannot be called inside an event loop")
    return value


def load_account(name: str) -> tuple[CloudAccount, CloudAccountBlock]:
    """The account saved as block ``name``; CloudError when there is none or its settings
    are not valid (naming the field)."""
    from pydantic import ValidationError

    try:
        block = _sync(CloudAccountBlock.load(name, validate=True), "loading a cloud account block")
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            raise CloudError(f"cloud account {name}: invalid settings: {_first(exc)}") from None
        raise CloudError(f"no cloud account block named {name!r}") from None
    try:
        return block.to_account(name), block
    except ValidationError as exc:
        raise CloudError(f"cloud account {name}: invalid settings: {_first(exc)}") from None


def _first(exc: Any) -> str:
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in err.get("loc", ())) or "value"
    return f"{where}: {err.get('msg', '')}"[:300]


def account_names() -> list[str]:
    """The names of every saved cloud account block."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        try:
            docs = client.read_block_documents_by_type(block_type_slug=BLOCK_TYPE_SLUG,
                                                        include_secrets=False)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404:  # the block type is not registered yet
                return []
            raise
    return sorted(d.name for d in docs if d.name and not d.is_anonymous)
