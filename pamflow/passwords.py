"""Password generation driven by a policy (length, character classes, exclusions)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field

CLASSES = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": "!#$%&()*+,-./:;<=>?@[]^_{|}~",
}


class PolicyError(ValueError):
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
