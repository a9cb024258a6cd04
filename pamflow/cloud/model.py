"""What the cloud import works with: an account's settings, the instances a cloud lists,
the outcome of a run, and the clean-up every cloud answer goes through.

A cloud's answer is untrusted input: names, tags and ids are cut to sane lengths, control
and format characters (bidi overrides, NUL, ESC) are dropped, addresses must parse as IP
addresses, and an instance id that does not look like one rejects that instance (with
the reason in the run's result) without stopping the others.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import PamflowError

Provider = Literal["aws", "gcp", "azure"]
AddressChoice = Literal["private", "public", "private-or-public", "public-or-private"]
PROVIDERS: tuple[str, ...] = ("aws", "gcp", "azure")

NAME_LIMIT = 255
TAG_KEY_LIMIT = 128
TAG_VALUE_LIMIT = 256
TAG_COUNT_LIMIT = 64
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,299}$")
LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a Prefect block name


ENDPOINTS_ENV = "PAMFLOW_CLOUD_ENDPOINTS"


def endpoint_allowed(url: str) -> bool:
    """Whether ``url`` is one of the endpoints this host allows (``PAMFLOW_CLOUD_ENDPOINTS``:
    comma-separated URLs, ``*`` wildcards allowed). Anyone who can call Prefect's API can
    edit a block, so the list of private endpoints credentials may be sent to lives on
    the worker's host, not in the block."""
    allowed = [u.strip().rstrip("/") for u in os.environ.get(ENDPOINTS_ENV, "").split(",")]
    target = url.strip().rstrip("/")
    return any(pattern and fnmatch.fnmatchcase(target, pattern) for pattern in allowed)


class CloudError(PamflowError):
    """A cloud could not be listed (refused credentials, unreachable, throttled past the
    retries, an answer that is not the API's): the run writes nothing. The message names the
    account, the provider and the step, never a secret."""


class CloudAccount(BaseModel):
    """One cloud account to import devices from (the domain view of the Prefect block)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    provider: Provider
    tenant: str = "default"
    regions: list[str] = Field(default_factory=list)  # AWS regions, GCP zones/regions, Azure locations
    project: str | None = None  # GCP project id
    subscription_id: str | None = None  # Azure subscription
    tag_filters: dict[str, str] = Field(default_factory=dict)  # key -> value ("*": any value)
    states: list[str] = Field(default_factory=list)  # empty: every state
    address: AddressChoice = "private"
    credentials: Literal["sdk", "vault"] = "sdk"
    vault_entry: str | None = None
    endpoint_url: str | None = None
    allow_cleartext: bool = False
    ca_file: str | None = None
    page_size: int | None = Field(default=None, ge=1, le=1000)
    max_instances: int = Field(default=100_000, ge=1)
    max_attempts: int = Field(default=4, ge=1, le=10)  # AWS/Azure: attempts per call
    retry_seconds: float = Field(default=60.0, gt=0, le=600)  # GCP: how long to retry a call

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ACCOUNT_RE.fullmatch(v):
            raise ValueError("an account name is a Prefect block name: lower-case letters, "
                             "digits and -")
        return v

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        for r in v:
            if not LOCATION_RE.fullmatch(r):
                raise ValueError(f"invalid region/zone/location {r[:40]!r}")
        return v

    def check(self) -> CloudAccount:
        """The settings a run needs, or CloudError saying which is missing."""
        where = f"cloud account {self.name} ({self.provider})"
        if self.provider == "aws" and not self.regions:
            raise CloudError(f"{where}: list the regions to import from")
        if self.provider == "gcp" and not self.project:
            raise CloudError(f"{where}: the GCP project is not set")
        if self.provider == "azure" and not self.subscription_id:
            raise CloudError(f"{where}: the Azure subscription id is not set")
        if self.credentials == "vault" and not self.vault_entry:
            raise CloudError(f"{where}: credentials from the vault need a vault entry name")
        if self.endpoint_url:
            if not endpoint_allowed(self.endpoint_url):
                raise CloudError(f"{where}: the endpoint {clean_text(self.endpoint_url, 200)} is "
                                 f"not allowed on this host: add it to {ENDPOINTS_ENV} (a block "
                                 "alone cannot send credentials to a new endpoint)")
            scheme = self.endpoint_url.split("://", 1)[0].lower()
            if scheme not in ("https", "http"):
                raise CloudError(f"{where}: the endpoint must be an https:// URL")
            if scheme == "http" and not self.allow_cleartext:
                raise CloudError(f"{where}: the endpoint {self.endpoint_url} is cleartext http; "
                                 "set allow_cleartext to use it anyway")
        return self

    @property
    def cleartext(self) -> bool:
        return bool(self.endpoint_url and self.endpoint_url.lower().startswith("http://"))


@dataclass
class CloudInstance:
    """An instance as the cloud listed it, cleaned up."""

    external_id: str
    name: str
    region: str | None
    private_address: str | None
    public_address: str | None
    platform: str  # linux | windows
    state: str
    tags: dict[str, str] = field(default_factory=dict)

    def address_for(self, choice: str) -> str | None:
        if choice == "private":
            return self.private_address
        if choice == "public":
            return self.public_address
        if choice == "public-or-private":
            return self.public_address or self.private_address
        return self.private_address or self.public_address


@dataclass
class Rejected:
    external_id: str
    reason: str


@dataclass
class Change:
    action: str  # added | updated | removed | restored | skipped
    external_id: str
    name: str
    address: str | None
    detail: str = ""


@dataclass
class ImportResult:
    """The outcome of importing one account: counts, and the changes (for the artifact)."""

    account: str
    provider: str
    tenant: str
    listed: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0
    changes: list[Change] = field(default_factory=list)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("changes")
        return d


# --- cleaning the cloud's answer -------------------------------------------------------

def clean_text(value: object, limit: int) -> str:
    """``value`` as text: NFC, without control/format characters, at most ``limit`` long."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if len(text) > limit * 4:
        text = text[: limit * 4]
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    return text.strip()[:limit]


def clean_tags(raw: object) -> dict[str, str]:
    """At most 64 tags, keys up to 128 and values up to 256 characters, cleaned."""
    tags: dict[str, str] = {}
    items: list[tuple[object, object]]
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):  # AWS: [{"Key": .., "Value": ..}]
        items = [(t.get("Key"), t.get("Value")) for t in raw if isinstance(t, dict)]
    else:
        return tags
    for key, value in items:
        if len(tags) >= TAG_COUNT_LIMIT:
            break
        k = clean_text(key, TAG_KEY_LIMIT)
        if k:
            tags[k] = clean_text(value, TAG_VALUE_LIMIT)
    return tags


def clean_address(value: object) -> str | None:
    """An IP address as text, or None when ``value`` is not one."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def clean_id(value: object) -> str | None:
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) else ""
    return text if ID_RE.fullmatch(text) else None


def make_instance(*, external_id: object, name: object, region: object, private: object,
                  public: object, windows: bool, state: object, tags: object
                  ) -> CloudInstance | Rejected:
    """A cleaned instance, or why it is rejected (an id that is not an id)."""
    ext = clean_id(external_id)
    if ext is None:
        shown = clean_text(external_id, 40) or "(empty)"
        return Rejected(shown, "the instance id is not a valid id")
    clean = clean_tags(tags)
    return CloudInstance(
        external_id=ext,
        name=clean_text(name, NAME_LIMIT) or ext,
        region=clean_text(region, 64) or None,
        private_address=clean_address(private),
        public_address=clean_address(public),
        platform="windows" if windows else "linux",
        state=clean_text(state, 32).lower() or "unknown",
        tags=clean,
    )


def matches(instance: CloudInstance, account: CloudAccount) -> bool:
    """Whether ``instance`` passes the account's state and tag filters (checked here too,
    whatever the cloud filtered on its side)."""
    if account.states and instance.state not in {s.lower() for s in account.states}:
        return False
    for key, want in account.tag_filters.items():
        if key not in instance.tags:
            return False
        if want != "*" and instance.tags[key] != want:
            return False
    return True


def in_regions(location: str | None, regions: list[str]) -> bool:
    """Whether a zone/location is one of ``regions`` (a region also matches its zones)."""
    if not regions:
        return True
    if not location:
        return False
    loc = location.lower()
    return any(loc == r.lower() or loc.startswith(r.lower() + "-") for r in regions)
