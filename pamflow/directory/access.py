"""Access groups processing: process all access groups compiling granted user access.

An access group's ``rules`` say what membership grants, as lists of names or patterns per
key (``{"devices": ["web-*"], "sites": ["paris"], "protocols": ["ssh"]}``). Each user's
``granted`` is the union, key by key, of the rules of the *active* groups they belong to —
nothing for a user who is not active. A group whose rules are malformed (not a mapping of
lists of short strings) grants nothing and is reported with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pamflow import audit
from pamflow.models import AccessGroup, AccessGroupMember, User, utcnow

MAX_RULE_VALUES = 10_000
MAX_RULE_TEXT = 512
CHUNK = 500


@dataclass
class AccessResult:
    users: int = 0  # users looked at
    changed: int = 0  # users whose granted access changed
    groups: int = 0  # active groups processed
    invalid_groups: list[dict] = field(default_factory=list)  # {"group": name, "reason": ...}

    def summary(self) -> dict:
        return {"users": self.users, "changed": self.changed, "groups": self.groups,
                "invalid_groups": len(self.invalid_groups)}


def rules_of(group: AccessGroup) -> dict[str, list[str]]:
    """The group's rules, checked; ValueError with the reason when malformed."""
    rules = group.rules or {}
    if not isinstance(rules, dict):
        raise ValueError("rules are not a mapping")
    out: dict[str, list[str]] = {}
    for key, values in rules.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise ValueError(f"rule key {str(key)[:40]!r} is not a short name")
        if not isinstance(values, list) or len(values) > MAX_RULE_VALUES:
            raise ValueError(f"rule {key!r} is not a list of at most {MAX_RULE_VALUES} values")
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_RULE_TEXT for v in values):
            raise ValueError(f"rule {key!r} holds a value that is not a short string")
        out[key] = values
    return out


def compile_access(engine: Engine, user_ids: Iterable[int] | None = None,
                   tenant: str | None = None, actor: str = "robot:access-groups-processing"
                   ) -> AccessResult:
    """Recompute ``granted`` for ``user_ids`` (default: every user of ``tenant``, or all)."""
    result = AccessResult()
    now = utcnow()
    with Session(engine) as db:
        groups: dict[int, dict[str, list[str]]] = {}
        for g in db.exec(select(AccessGroup).where(col(AccessGroup.active))):
            try:
                groups[g.id or 0] = rules_of(g)
            except ValueError as exc:
                result.invalid_groups.append({"group": g.name, "reason": str(exc)})
        result.groups = len(groups)
        query = select(User)
        if user_ids is not None:
            wanted = list(user_ids)
            query = query.where(col(User.id).in_(wanted)) if wanted else query.where(sa.false())
        if tenant is not None:
            query = query.where(col(User.tenant) == tenant)
        users = list(db.exec(query))
        memberships: dict[int, list[int]] = defaultdict(list)
        ids = [u.id for u in users]
        for start in range(0, len(ids), CHUNK):
            for m in db.exec(select(AccessGroupMember).where(
                    col(AccessGroupMember.user_id).in_(ids[start:start + CHUNK]))):
                memberships[m.user_id].append(m.group_id)
        changed: list[str] = []
        for user in users:
            grant: dict[str, set[str]] = defaultdict(set)
            if user.status == "active":
                for gid in memberships.get(user.id or 0, []):
                    for key, values in groups.get(gid, {}).items():
                        grant[key].update(values)
            compiled = {k: sorted(v) for k, v in sorted(grant.items()) if v}
            result.users += 1
            if compiled != (user.granted or {}):
                user.granted, user.granted_at = compiled, now
                db.add(user)
                changed.append(user.username)
        result.changed = len(changed)
        if changed:
            audit.record(db, actor, "access_compiled", "access_group", None,
                         {"users": changed[:1000], "count": len(changed)})
        db.commit()
    return result
