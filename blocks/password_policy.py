"""Password policies as Prefect blocks, edited in the UI (Blocks > Password policy).

A credential names its policy (``Credential.policy``); the rotation protocol looks for a
block of that name first, then the system parameter ``password_policy.<name>``, then uses
pamflow's default policy. Only the *shape* of passwords lives here,
never a secret, so it is safe in Prefect's API.

Anyone who can call Prefect's API can edit a block, so a block cannot weaken passwords
below the floor kept in pamflow's store (``pamflow.passwords.PolicyFloor``: 16 characters,
3 character classes and 80 bits by default; system parameter ``password_policy.floor``).
A block asking for less is raised to the floor when the robot reads it, with a warning.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine

from prefect.blocks.core import Block
from pydantic import Field

from pamflow.passwords import PasswordPolicy


class PasswordPolicyBlock(Block):
    """How new passwords look: length, character classes, excluded characters (never weaker
    than the floor in pamflow's store, whatever is saved here)."""

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


TTL_SECONDS = 60.0
_cache: dict[str, tuple[float, PasswordPolicy | None]] = {}


def load_policy_block(name: str) -> PasswordPolicy | None:
    """The policy saved as block ``name``, or None (no such block, or no Prefect API).

    Without ``PREFECT_API_URL`` nothing is asked: Prefect would otherwise start a
    temporary in-process server just to answer.

    Cached for a minute, so a long-lived executor sees edits made in the UI soon after.
    """
    hit = _cache.get(name)
    if hit is not None and time.monotonic() - hit[0] < TTL_SECONDS:
        return hit[1]
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # no server configured: never start an ephemeral one
        return None
    try:
        loaded = PasswordPolicyBlock.load(name, validate=True)
        if isinstance(loaded, Coroutine):  # Prefect answers a coroutine inside a running event loop
            loaded.close()
            raise RuntimeError(f"password policy block {name} cannot be loaded inside an event loop")
        policy = loaded.to_policy(name)
    except Exception:  # noqa: BLE001 - no server, no block of that name: not ours to decide
        policy = None
    _cache[name] = (time.monotonic(), policy)
    return policy


def clear_cache() -> None:
    _cache.clear()
