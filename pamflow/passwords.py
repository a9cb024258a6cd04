"""Password generation driven by a policy (length, character classes, exclusions), and the
floor no policy read from Prefect may go below."""

from __future__ import annotations

import json
import logging
import math
import secrets
import string
from dataclasses import dataclass, field, replace

from .errors import PamflowError

log = logging.getLogger(__name__)

CLASSES = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": "!#$%&()*+,-./:;<=>?@[]^_{|}~",
}


class PolicyError(PamflowError, ValueError):
    """A password policy that cannot produce a password."""


@dataclass(frozen=True)
class PasswordPolicy:
    """How new secrets look. ``min_each`` characters of every class in ``classes``."""

    length: int = 24
    classes: tuple[str, ...] = ("lower", "upper", "digits", "symbols")
    min_each: int = 1
    exclude: str = "\"'`\\ "  # quoting troublemakers, on by default
    extra: str = ""  # characters added to the alphabet
    name: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise PolicyError(f"unknown character classes: {', '.join(unknown)}")
        if not self.classes and not self.extra:
            raise PolicyError("policy allows no characters")
        for cls in self.classes:
            if not self._pool(cls):
                raise PolicyError(f"class {cls} has no characters left after exclusions")
        if self.length < max(4, self.min_each * len(self.classes)):
            raise PolicyError(
                f"length {self.length} too short for {self.min_each} of each of "
                f"{len(self.classes)} classes"
            )

    def _pool(self, cls: str) -> str:
        return "".join(ch for ch in CLASSES[cls] if ch not in self.exclude)

    @property
    def alphabet(self) -> str:
        chars = "".join(self._pool(c) for c in self.classes)
        chars += "".join(ch for ch in self.extra if ch not in self.exclude and ch not in chars)
        return chars

    @classmethod
    def from_dict(cls, data: dict) -> PasswordPolicy:
        data = dict(data)
        if "classes" in data:
            data["classes"] = tuple(data["classes"])
        return cls(**data)

    def generate(self) -> str:
        """A new password satisfying the policy, from the OS's CSPRNG."""
        chars = [secrets.choice(self._pool(c)) for c in self.classes for _ in range(self.min_each)]
        alphabet = self.alphabet
        chars += [secrets.choice(alphabet) for _ in range(self.length - len(chars))]
        # Fisher-Yates with the CSPRNG
        for i in range(len(chars) - 1, 0, -1):
            j = secrets.randbelow(i + 1)
            chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)

    def satisfied_by(self, password: str) -> bool:
        if len(password) != self.length or any(ch in self.exclude for ch in password):
            return False
        return all(sum(ch in self._pool(c) for ch in password) >= self.min_each for c in self.classes)


def generate_password(policy: PasswordPolicy | None = None) -> str:
    return (policy or PasswordPolicy()).generate()


# ---- the floor --------------------------------------------------------------------------
# Password policy blocks live in Prefect, whose API lets any caller edit blocks. Whatever a
# block says, the passwords pamflow sets are at least as strong as the floor, which is
# configured only in the store (system parameter ``password_policy.floor``).
FLOOR_PARAMETER = "password_policy.floor"


@dataclass(frozen=True)
class PolicyFloor:
    """The weakest passwords a policy block may ask for: a minimum length, a minimum number of
    character classes (each used at least once), and a minimum strength in bits
    (``length * log2(alphabet size)``, which exclusions cannot shrink below it)."""

    min_length: int = 16
    min_classes: int = 3
    min_bits: int = 80

    def __post_init__(self) -> None:
        for name in ("min_length", "min_classes", "min_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError(f"floor {name} must be a whole number >= 0, not {value!r}")
        if self.min_length > 256 or self.min_classes > len(CLASSES) or self.min_bits > 1024:
            raise PolicyError("floor asks for more than any policy can give "
                              f"(length <= 256, classes <= {len(CLASSES)}, bits <= 1024)")

    @classmethod
    def from_json(cls, text: str) -> PolicyFloor:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"{FLOOR_PARAMETER} is not a valid floor: "
                              f"{exc if isinstance(exc, PolicyError) else exc.__class__.__name__}"
                              ) from None


def _bits(policy: PasswordPolicy) -> float:
    size = len(policy.alphabet)
    return policy.length * math.log2(size) if size > 1 else 0.0


def meets_floor(policy: PasswordPolicy, floor: PolicyFloor) -> bool:
    return (policy.length >= floor.min_length and len(policy.classes) >= floor.min_classes
            and policy.min_each >= 1 and _bits(policy) >= floor.min_bits)


def raise_to_floor(policy: PasswordPolicy, floor: PolicyFloor) -> tuple[PasswordPolicy, list[str]]:
    """``policy`` raised to ``floor`` where it falls short, and what was raised (empty: it met
    the floor as it was). Classes are added in the order lower, upper, digits, symbols,
    skipping any the policy's exclusions emptied; when the floor still cannot be met, the
    default policy (at the floor's length, if longer) replaces it."""
    if meets_floor(policy, floor):
        return policy, []
    raised: list[str] = []
    classes = list(policy.classes)
    for cls in CLASSES:
        if len(classes) >= floor.min_classes:
            break
        if cls not in classes and any(ch not in policy.exclude for ch in CLASSES[cls]):
            classes.append(cls)
    if len(classes) != len(policy.classes):
        raised.append(f"classes {'+'.join(policy.classes) or 'none'} -> {'+'.join(classes)}")
    min_each = max(policy.min_each, 1)
    if min_each != policy.min_each:
        raised.append(f"min_each {policy.min_each} -> 1")
    length = max(policy.length, floor.min_length, min_each * len(classes))
    try:
        candidate = replace(policy, classes=tuple(classes), min_each=min_each, length=length)
        size = len(candidate.alphabet)
        if size > 1:
            length = max(length, math.ceil(floor.min_bits / math.log2(size)))
        candidate = replace(candidate, length=length)
    except PolicyError:
        candidate = None
    if candidate is None or length > 256 or not meets_floor(candidate, floor):
        fallback = PasswordPolicy(length=max(24, floor.min_length), name=policy.name)
        return fallback, [f"replaced by the default policy ({fallback.length} characters, "
                          f"{'+'.join(fallback.classes)}): the block's exclusions leave too "
                          "few characters to meet the floor"]
    if length != policy.length:
        raised.insert(0, f"length {policy.length} -> {length}")
    return candidate, raised


def store_floor(db) -> PolicyFloor:
    """The floor configured in the store (``password_policy.floor``), else the default one.

    A floor that cannot be read is logged and the default floor used: a typo in the
    parameter must not lower it.
    """
    from .models import SystemParameter

    row = db.get(SystemParameter, FLOOR_PARAMETER)
    if row is None:
        return PolicyFloor()
    try:
        return PolicyFloor.from_json(row.value)
    except PolicyError as exc:
        log.warning("%s; using the default floor", exc)
        return PolicyFloor()


def at_floor(db, policy: PasswordPolicy | None, source: str = "block") -> PasswordPolicy | None:
    """``policy`` (read from a Prefect block) raised to the store's floor; a warning says so
    when it had to be raised. None stays None."""
    if policy is None:
        return None
    floor = store_floor(db)
    raised, changes = raise_to_floor(policy, floor)
    if changes:
        log.warning("password policy %s %r asks for weaker passwords than the floor "
                    "(%d characters, %d classes, %d bits); raised to the floor: %s",
                    source, policy.name, floor.min_length, floor.min_classes, floor.min_bits,
                    "; ".join(changes))
    return raised
