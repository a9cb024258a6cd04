"""Password policies as Prefect blocks, edited in the UI (Blocks > Password policy).

A credential names its policy (``Credential.policy``); the rotation protocol loads the
block of that name once per executor batch. Only the *shape* of passwords lives here,
never a secret, so it is safe in Prefect's API.
"""

from __future__ import annotations

from functools import lru_cache

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.passwords import PasswordPolicy


class PasswordPolicyBlock(Block):
    """How new passwords look: length, character classes, excluded characters."""

    _block_type_name = "Password policy"
    _block_type_slug = "pamflow-password-policy"
    _description = "pamflow: length, character classes and exclusions of generated passwords."

    length: int = Field(default=24, ge=4, le=256)
    classes: list[str] = Field(default_factory=lambda: ["lower", "upper", "digits", "symbols"])
    min_each: int = Field(default=1, ge=0)
    exclude: str = Field(default="\"'`\\ ", description="Characters never used.")
    extra: str = Field(default="", description="Characters added to the alphabet.")

    def to_policy(self, name: str = "default") -> PasswordPolicy:
        return PasswordPolicy(length=self.length, classes=tuple(self.classes),
                              min_each=self.min_each, exclude=self.exclude, extra=self.extra,
                              name=name)


@lru_cache(maxsize=64)
def _load(name: str) -> PasswordPolicy | None:
    try:
        return PasswordPolicyBlock.load(name, validate=True).to_policy(name)
    except Exception:  # noqa: BLE001 - no server, no block of that name: the default applies
        return None


def load_policy(name: str | None) -> PasswordPolicy:
    """The named policy's block, or pamflow's default policy when there is none."""
    if not name or name == "default":
        found = _load("default")
        return found or PasswordPolicy()
    return _load(name) or PasswordPolicy(name=name)


def clear_cache() -> None:
    _load.cache_clear()
