"""LDAP/AD synchronization: users and groups from a directory into pamflow's users and
access groups.

A run has two phases. *Read* binds and pages through the directory — only the entries
changed since the last run's mark (``modifyTimestamp`` / ``uSNChanged``) in an incremental
run, every entry in a full run — plus, in an incremental run, a listing of the ids still in
scope (one attribute per entry) so that users who left are noticed. Nothing is written
before the read has finished: a directory that refuses the bind, goes away or answers an
error part way changes nothing in the store.

*Apply* then writes in chunks (one transaction and one audit record each): users are
created or updated (matched by ``entryUUID``/``objectGUID``, then by username within the
same directory), users who left the scope or are disabled in the directory are
*disabled*, never deleted; groups become access groups with their memberships (a group
that left is deactivated); the marks move forward last, so a run that fails is simply
done again by the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pamflow import audit
from pamflow.models import (
    AccessGroup,
    AccessGroupMember,
    DirectorySyncState,
    User,
    table_of,
    utcnow,
)

from .errors import DirectoryError, DirectorySettingsError
from .ldap import DirectoryConnection, Entry
from .records import (
    GroupRecord,
    Rejected,
    Rejection,
    UserRecord,
    dn_key,
    external_id,
    group_record,
    later,
    mark,
    settled,
    shown_dn,
    user_record,
    valid_mark,
)
from .settings import DirectorySettings

log = logging.getLogger(__name__)
CHUNK = 500
REJECTIONS_KEPT = 1000
T = TypeVar("T")
Progress = Callable[[float, str], None]


def _chunks(items: list[T], size: int = CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _noop(_pct: float, _text: str) -> None:
    return None


@dataclass
class Scope:
    """What one kind of entry (users or groups) looked like in the directory this run."""

    records: list = field(default_factory=list)  # changed (incremental) or all (full)
    present: set[str] | None = None  # ids still in scope; None: not listed (nothing leaves)
    mark: str | None = None  # the newest change mark read
    rejected: list[Rejection] = field(default_factory=list)
    pages: int = 0


@dataclass
class DirectoryRead:
    """The outcome of the read phase (no writes yet)."""

    directory: str
    tenant: str
    mode: str  # full | incremental
    since: dict[str, str | None]
    users: Scope
    groups: Scope
    read: int = 0  # entries read with their attributes
    listed: int = 0  # entries listed by id only, to notice departures
    pages: int = 0
    single_user: str | None = None
    kind: str = "openldap"
    started: float = 0.0  # this host's clock when the read began (time.time())
    skew_seconds: float = 60.0


@dataclass
class SyncResult:
    directory: str
    tenant: str
    mode: str
    read: int = 0
    listed: int = 0
    pages: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    disabled: int = 0
    reactivated: int = 0
    groups_created: int = 0
    groups_updated: int = 0
    groups_deactivated: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    access_compiled: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    changed_users: set[int] = field(default_factory=set)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("rejected", "changed_users")}
        out["rejected"] = len(self.rejected)
        return out


# -- state -----------------------------------------------------------------------------------
def _state(db: Session, key: str) -> DirectorySyncState:
    return db.get(DirectorySyncState, key) or DirectorySyncState(key=key, last_result={})


def plan_mode(engine: Engine, settings: DirectorySettings, full: bool,
              now: datetime | None = None) -> tuple[str, dict[str, str | None]]:
    """``full`` or ``incremental``, and the marks an incremental run reads from."""
    now = now or utcnow()
    with Session(engine) as db:
        states = {kind: _state(db, f"{settings.name}:{kind}") for kind in ("users", "groups")}
    marks = {k: valid_mark(s.mark, settings.kind) for k, s in states.items()}
    last_full = states["users"].last_full_at
    stale = last_full is None or now - last_full > timedelta(hours=settings.full_every_hours)
    if full or stale or marks["users"] is None:
        return "full", {"users": None, "groups": None}
    return "incremental", marks  # a kind without a mark (no groups yet) is read whole


# -- read ------------------------------------------------------------------------------------
def _since_filter(settings: DirectorySettings, base_filter: str, since: str | None) -> str:
    if since is None:
        return base_filter
    attribute = settings.default("mark_attribute")
    if settings.kind == "ad":
        return f"(&{base_filter}({attribute}>={int(since) + 1}))"
    if since.startswith(">"):  # settled: strictly after it
        return f"(&{base_filter}(!({attribute}<={since[1:]})))"
    return f"(&{base_filter}({attribute}>={since}))"


def _read_kind(conn: DirectoryConnection, settings: DirectorySettings, kind: str,
               since: str | None, parse: Callable[[Entry, DirectorySettings], Any],
               extra_filter: str | None = None, progress: Progress = _noop) -> Scope:
    base = settings.base_for(kind)
    base_filter = settings.filter_for(kind)
    if extra_filter:
        base_filter = f"(&{base_filter}{extra_filter})"
    mapping = settings.mapping(kind)
    attributes = sorted({*mapping.values(), settings.default("id_attribute"),
                         settings.default("mark_attribute")})
    scope = Scope()
    ids: set[str] = set()
    for page in conn.search(base, _since_filter(settings, base_filter, since), attributes):
        scope.pages += 1
        for entry in page:
            try:
                ids.add(external_id(entry, settings))
                scope.records.append(parse(entry, settings))
            except Rejected as exc:
                scope.rejected.append(Rejection(shown_dn(entry), str(exc)))
            scope.mark = later(scope.mark, mark(entry, settings), settings.kind)
        progress(min(35.0, 2.0 + scope.pages), f"{kind}: {len(scope.records)} read")
    if since is None and extra_filter is None:
        # a full read: every id in scope was seen (a rejected entry is still present)
        scope.present = ids
    return scope


def _list_ids(conn: DirectoryConnection, settings: DirectorySettings, kind: str) -> set[str]:
    """The ids of every entry still in scope (one attribute each): who left is who is
    missing."""
    present: set[str] = set()
    for page in conn.search(settings.base_for(kind), settings.filter_for(kind),
                            [settings.default("id_attribute")]):
        for entry in page:
            try:
                present.add(external_id(entry, settings))
            except Rejected:
                continue
    return present


def read_directory(engine: Engine, settings: DirectorySettings, password: str | None,
                   full: bool = False, username: str | None = None,
                   progress: Progress = _noop) -> DirectoryRead:
    """The read phase: bind, page through users and groups; nothing is written.

    ``username`` reads that one user only (its name escaped into the filter: a user named
    ``*)(uid=*`` is just that name) and disables nobody.
    """
    from ldap3.utils.conv import escape_filter_chars

    settings.check()
    if username is not None and (not username or len(username) > 255
                                 or any(ord(c) < 32 for c in username)):
        raise DirectorySettingsError(f"directory {settings.name}: a user name to sync must be "
                                     "1-255 characters without control characters")
    mode, since = plan_mode(engine, settings, full)
    started = time.time()
    with DirectoryConnection(settings, password) as conn:
        if username is not None:
            attribute = settings.mapping("users")["username"]
            one = f"({attribute}={escape_filter_chars(username)})"
            users = _read_kind(conn, settings, "users", None, user_record, one, progress)
            result = DirectoryRead(settings.name, settings.tenant, "single",
                                   {"users": None, "groups": None}, users, Scope(),
                                   single_user=username, kind=settings.kind)
        else:
            users = _read_kind(conn, settings, "users", since["users"], user_record,
                               progress=progress)
            groups = (_read_kind(conn, settings, "groups", since["groups"], group_record,
                                 progress=progress)
                      if settings.group_base else Scope(present=None))
            listed_before = conn.stats.entries
            if mode == "incremental" and settings.departures_every_run:
                users.present = _list_ids(conn, settings, "users")
                if settings.group_base and groups.present is None:
                    groups.present = _list_ids(conn, settings, "groups")
            result = DirectoryRead(settings.name, settings.tenant, mode, since, users, groups,
                                   kind=settings.kind)
            result.listed = conn.stats.entries - listed_before
        result.started, result.skew_seconds = started, settings.clock_skew_seconds
        result.pages = conn.stats.pages
        result.read = conn.stats.entries - result.listed
    return result


# -- apply -----------------------------------------------------------------------------------
def _user_fields(rec: UserRecord) -> dict[str, Any]:
    return {"username": rec.username, "email": rec.email, "display_name": rec.display_name,
            "dn": rec.dn, "external_id": rec.external_id}


def _apply_users(engine: Engine, read: DirectoryRead, result: SyncResult, actor: str,
                 progress: Progress) -> None:
    name, now = read.directory, utcnow()
    with Session(engine) as db:
        mine = list(db.exec(select(User.id, User.external_id, User.username).where(
            col(User.directory) == name)))
    by_id = {ext: uid for uid, ext, _n in mine if ext}
    by_name = {username: uid for uid, _e, username in mine}
    users = table_of(User)
    # a new user's row, from the model's defaults (building a model per row is slow)
    template = User(username="-", source="ldap", directory=name, tenant=read.tenant,
                    granted={}).model_dump(exclude={"id"})
    seen_names: set[str] = set()
    records: list[UserRecord] = read.users.records
    done = 0
    for chunk in _chunks(records):
        created: list[str] = []
        updated: list[str] = []
        new_rows: list[dict[str, Any]] = []
        with Session(engine) as db:
            names = [r.username for r in chunk]
            holders = {u.username: u for u in db.exec(select(User).where(col(User.username).in_(names)))}
            wanted = {i for r in chunk
                      if (i := by_id.get(r.external_id) or by_name.get(r.username)) is not None}
            loaded = {u.id: u for u in db.exec(select(User).where(col(User.id).in_(wanted)))}
            for rec in chunk:
                if rec.username in seen_names:
                    result.rejected.append(Rejection(rec.dn[:300], f"username {rec.username!r} "
                                                     "is used by another entry of this directory"))
                    continue
                seen_names.add(rec.username)
                uid = by_id.get(rec.external_id) or by_name.get(rec.username)
                user = loaded.get(uid) if uid is not None else None
                holder = holders.get(rec.username)
                if holder is not None and (user is None or holder.id != user.id):
                    owner = (f"directory {holder.directory}" if holder.directory
                             else f"a {holder.source} user")
                    result.rejected.append(Rejection(rec.dn[:300], f"username {rec.username!r} "
                                                     f"already belongs to {owner}"))
                    continue
                status = "disabled" if rec.disabled else "active"
                if user is None:
                    new_rows.append({**template, "status": status, "synced_at": now,
                                     "created_at": now, "granted": {},
                                     "disabled_at": now if rec.disabled else None,
                                     **_user_fields(rec)})
                    created.append(rec.username)
                    result.created += 1
                    continue
                changes = {k: v for k, v in _user_fields(rec).items() if getattr(user, k) != v}
                if user.status in ("active", "disabled") and user.status != status:
                    changes["status"] = status
                    changes["disabled_at"] = now if rec.disabled else None
                    if status == "active":
                        result.reactivated += 1
                    else:
                        result.disabled += 1
                if changes:  # an unchanged user is not written at all
                    for k, v in changes.items():
                        setattr(user, k, v)
                    user.synced_at = now
                    db.add(user)
                    updated.append(rec.username)
                    result.updated += 1
                    if "status" in changes:  # granted access depends on status and groups
                        result.changed_users.add(user.id or 0)
                else:
                    result.unchanged += 1
            if new_rows:  # one multi-row INSERT per chunk
                try:
                    db.connection().execute(sa.insert(users), new_rows)
                except sa.exc.IntegrityError:
                    db.rollback()
                    raise DirectoryError(
                        f"directory {name}: another run created some of these users at the same "
                        "time (a username is taken): run the synchronisation again") from None
            db.flush()
            for uid, ext, username in db.exec(select(User.id, User.external_id, User.username)
                                              .where(col(User.directory) == name,
                                                     col(User.username).in_(created))):
                by_id[ext or ""] = uid  # new users have no groups yet: no access to compile
                by_name[username] = uid
            if created or updated:
                audit.record(db, actor, "directory_users_synced", "directory", name,
                             {"tenant": read.tenant, "mode": read.mode,
                              "created": created, "updated": updated})
            db.commit()
        done += len(chunk)
        progress(40 + 30 * done / max(1, len(records)), f"{done} of {len(records)} users written")


def _disable_departed(engine: Engine, read: DirectoryRead, result: SyncResult, actor: str) -> None:
    present = read.users.present
    if present is None:
        return
    name, now = read.directory, utcnow()
    with Session(engine) as db:
        gone = [(uid, username) for uid, ext, username in db.exec(
            select(User.id, User.external_id, User.username).where(
                col(User.directory) == name, col(User.status) != "disabled"))
                if ext not in present]
        for chunk in _chunks(gone):
            ids = [uid for uid, _n in chunk]
            db.connection().execute(sa.update(table_of(User)).where(
                table_of(User).c.id.in_(ids)).values(status="disabled", disabled_at=now,
                                                     synced_at=now))
            result.changed_users.update(i for i in ids if i is not None)
            audit.record(db, actor, "directory_users_disabled", "directory", name,
                         {"tenant": read.tenant, "reason": "left the directory's scope",
                          "users": [n for _i, n in chunk]})
            db.commit()
            result.disabled += len(chunk)


def _apply_groups(engine: Engine, read: DirectoryRead, result: SyncResult, actor: str) -> None:
    name, now = read.directory, utcnow()
    records: list[GroupRecord] = read.groups.records
    if not records and read.groups.present is None:
        return
    with Session(engine) as db:
        users_by_dn: dict[str, int] = {}
        if records:
            users_by_dn = {dn_key(dn): uid for uid, dn in db.exec(
                select(User.id, User.dn).where(col(User.directory) == name))
                if dn and uid is not None}
        mine = {g.external_id: g for g in db.exec(select(AccessGroup).where(
            col(AccessGroup.directory) == name))}
        for chunk in _chunks(records):
            touched: list[str] = []
            names = [r.name for r in chunk]
            holders = {g.name: g for g in db.exec(select(AccessGroup).where(
                col(AccessGroup.name).in_(names)))}
            for rec in chunk:
                group = mine.get(rec.external_id)
                holder = holders.get(rec.name)
                if holder is not None and (group is None or holder.id != group.id):
                    owner = (f"directory {holder.directory}" if holder.directory
                             else "a local access group")
                    result.rejected.append(Rejection(rec.dn[:300], f"group name {rec.name!r} "
                                                     f"already belongs to {owner}"))
                    continue
                if group is None:
                    group = AccessGroup(name=rec.name, description=rec.description, rules={},
                                        source="ldap", directory=name, external_id=rec.external_id,
                                        dn=rec.dn, tenant=read.tenant, active=True, synced_at=now)
                    db.add(group)
                    db.flush()
                    mine[rec.external_id] = group
                    result.groups_created += 1
                else:
                    changes = {k: v for k, v in {"name": rec.name, "description": rec.description,
                                                 "dn": rec.dn, "active": True}.items()
                               if getattr(group, k) != v}
                    for k, v in changes.items():
                        setattr(group, k, v)
                    group.synced_at = now
                    db.add(group)
                    if changes:
                        result.groups_updated += 1
                wanted = {users_by_dn[m] for m in rec.members if m in users_by_dn}
                have = {m.user_id for m in db.exec(select(AccessGroupMember).where(
                    col(AccessGroupMember.group_id) == group.id))}
                for uid in wanted - have:
                    db.add(AccessGroupMember(group_id=group.id or 0, user_id=uid))
                for m in db.exec(select(AccessGroupMember).where(
                        col(AccessGroupMember.group_id) == group.id,
                        col(AccessGroupMember.user_id).in_(have - wanted))):
                    db.delete(m)
                result.memberships_added += len(wanted - have)
                result.memberships_removed += len(have - wanted)
                result.changed_users |= (wanted ^ have)
                touched.append(rec.name)
            if touched:
                audit.record(db, actor, "directory_groups_synced", "directory", name,
                             {"tenant": read.tenant, "groups": touched})
            db.commit()
        present = read.groups.present
        if present is not None:
            gone = [g for g in mine.values() if g.active and g.external_id not in present]
            for g in gone:
                g.active, g.synced_at = False, now
                db.add(g)
                result.changed_users |= {m.user_id for m in db.exec(select(AccessGroupMember).where(
                    col(AccessGroupMember.group_id) == g.id))}
            if gone:
                audit.record(db, actor, "directory_groups_deactivated", "directory", name,
                             {"tenant": read.tenant, "groups": [g.name for g in gone]})
                db.commit()
            result.groups_deactivated += len(gone)


def _save_marks(engine: Engine, read: DirectoryRead, result: SyncResult) -> None:
    now = utcnow()
    with Session(engine) as db:
        for kind, scope in (("users", read.users), ("groups", read.groups)):
            state = _state(db, f"{read.directory}:{kind}")
            previous = valid_mark(state.mark, read.kind)
            newest = (later(previous, scope.mark, read.kind) if read.mode == "incremental"
                      else (scope.mark or later(previous, None, read.kind)))
            if previous and previous.startswith(">") and newest == previous[1:]:
                state.mark = previous  # nothing newer: a settled mark stays settled
            else:
                state.mark = settled(newest, read.kind, read.started, read.skew_seconds)
            state.last_run_at = now
            if read.mode == "full":
                state.last_full_at = now
            state.last_result = result.summary()
            db.add(state)
        db.commit()


def apply_read(engine: Engine, read: DirectoryRead, actor: str, progress: Progress = _noop,
               compile_access: Callable[[Engine, Iterable[int]], int] | None = None) -> SyncResult:
    """The apply phase: write what the read found (see the module docstring)."""
    result = SyncResult(read.directory, read.tenant, read.mode, read=read.read,
                        listed=read.listed, pages=read.pages)
    result.rejected = list(read.users.rejected) + list(read.groups.rejected)
    _apply_users(engine, read, result, actor, progress)
    if read.single_user is None:
        _disable_departed(engine, read, result, actor)
        _apply_groups(engine, read, result, actor)
        _save_marks(engine, read, result)
    result.changed_users.discard(0)
    if compile_access is not None and result.changed_users:
        result.access_compiled = compile_access(engine, sorted(result.changed_users))
    if len(result.rejected) > REJECTIONS_KEPT:
        result.rejected = result.rejected[:REJECTIONS_KEPT]
    return result
