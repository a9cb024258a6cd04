"""Turning raw directory entries into records, strictly: an entry whose mapped values are
not valid UTF-8, hold control characters or exceed the length limit is *rejected* with the
reason (and its DN), never half-read. Names are just names: nothing read here is ever put
into a filter or a DN without escaping."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from .ldap import Entry
from .settings import DirectorySettings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_GENERALIZED_TIME = re.compile(r"^\d{14}(?:[.,]\d{1,6})?Z$")
_USN = re.compile(r"^\d{1,20}$")
MAX_DN = 4096


class Rejected(Exception):  # noqa: N818 - internal signal, never leaves this package
    """An entry that cannot be taken as it is; ``reason`` says why."""


@dataclass(frozen=True)
class Rejection:
    dn: str
    reason: str

    def as_dict(self) -> dict:
        return {"dn": self.dn, "reason": self.reason}


@dataclass
class UserRecord:
    external_id: str
    dn: str
    username: str
    email: str | None
    display_name: str | None
    disabled: bool = False


@dataclass
class GroupRecord:
    external_id: str
    dn: str
    name: str
    description: str | None
    members: list[str] = field(default_factory=list)  # member DNs, normalised (see dn_key)


@dataclass
class ComputerRecord:
    external_id: str
    dn: str
    name: str
    address: str | None
    operating_system: str | None


def shown_dn(entry: Entry) -> str:
    """The DN for a message: printable, at most 300 characters."""
    return _CONTROL.sub("?", entry.dn)[:300]


_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2})|\\(.)", re.S)


def _unescape(value: str) -> str:
    """An RDN value without its escapes (``\\2C`` and ``\\,`` both become ``,``)."""
    raw = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(value):
        raw += value[pos:m.start()].encode()
        raw += bytes([int(m.group(1), 16)]) if m.group(1) else m.group(2).encode()
        pos = m.end()
    raw += value[pos:].encode()
    return raw.decode("utf-8", errors="replace")


def _split(text: str, seps: str) -> list[tuple[str, str]]:
    """``text`` split at unescaped ``seps``: (part, the separator after it)."""
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch in seps:
            parts.append(("".join(current), ch))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append(("".join(current), ""))
    return parts


def dn_key(dn: str) -> str:
    """A DN normalised for comparison: attribute names and values lowercased, escapes
    resolved (a directory may answer ``\\3D`` for the ``\\=`` it was given), spaces
    around separators dropped. Never raises: anything is a key."""
    from ldap3.utils.dn import escape_rdn

    out = []
    for ava, sep in _split(dn, ",+"):
        attr, eq, value = ava.partition("=")
        if not eq:
            out.append(ava.strip().lower() + sep)
            continue
        out.append(f"{attr.strip().lower()}={escape_rdn(_unescape(value.strip()).lower())}{sep}")
    return "".join(out)


def text(entry: Entry, attribute: str | None, what: str, limit: int, *,
         required: bool = False, control_ok: bool = False) -> str | None:
    """The first value of ``attribute`` as text, or None; Rejected when it is not UTF-8,
    holds control characters, or is longer than ``limit``."""
    values = entry.values(attribute) if attribute else []
    if not values or values[0] in (b"", None):
        if required:
            raise Rejected(f"no {what} ({attribute})")
        return None
    raw = values[0]
    if isinstance(raw, str):
        value = raw
    else:
        try:
            value = bytes(raw).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise Rejected(f"{what} ({attribute}) is not valid UTF-8") from None
    if len(value) > limit:
        raise Rejected(f"{what} ({attribute}) is {len(value)} characters, more than the "
                       f"limit of {limit}")
    if not control_ok and _CONTROL.search(value):
        raise Rejected(f"{what} ({attribute}) contains control characters")
    value = value.strip()
    if required and not value:
        raise Rejected(f"{what} ({attribute}) is empty")
    return value or None


def external_id(entry: Entry, settings: DirectorySettings) -> str:
    """The entry's stable id: ``entryUUID`` (text) or ``objectGUID`` (16 bytes, shown as a
    UUID); the normalised DN when the directory sends neither."""
    attribute = settings.default("id_attribute")
    values = entry.values(attribute)
    if values:
        raw = values[0]
        if settings.kind == "ad" and isinstance(raw, bytes | bytearray) and len(raw) == 16:
            return str(uuid.UUID(bytes_le=bytes(raw)))
        found = text(entry, attribute, "id", 64)
        if found:
            return found.lower()
    if len(entry.dn) > MAX_DN:
        raise Rejected(f"DN is longer than {MAX_DN} characters")
    return "dn:" + dn_key(entry.dn)


def mark(entry: Entry, settings: DirectorySettings) -> str | None:
    """The entry's change mark (``modifyTimestamp`` / ``uSNChanged``), if well formed."""
    attribute = settings.default("mark_attribute")
    try:
        value = text(entry, attribute, "change mark", 40)
    except Rejected:
        return None
    if value is None:
        return None
    pattern = _USN if settings.kind == "ad" else _GENERALIZED_TIME
    return value if pattern.fullmatch(value) else None


def later(a: str | None, b: str | None, kind: str) -> str | None:
    """The later of two marks of ``kind`` (None is earliest; a settled mark's ``>`` is
    dropped: the result is a mark as read)."""
    a = a.lstrip(">") if a else None
    b = b.lstrip(">") if b else None
    if a is None:
        return b
    if b is None:
        return a
    if kind == "ad":
        return a if int(a) >= int(b) else b
    return a if a >= b else b


def valid_mark(value: str | None, kind: str) -> str | None:
    """A stored mark, if it is well formed (it goes into a filter): else None (full run).

    A ``modifyTimestamp`` mark has one-second resolution, so the next run reads its second
    again (``>=``) — unless it is stored *settled* (``>`` prefix): the second was over
    before the run that read it began, so nothing can change in it any more and the next
    run reads strictly after it.
    """
    if value is None:
        return None
    pattern = _USN if kind == "ad" else _GENERALIZED_TIME
    bare = value[1:] if value.startswith(">") and kind != "ad" else value
    return value if pattern.fullmatch(bare) else None


def settled(value: str | None, kind: str, read_started: float, skew_seconds: float) -> str | None:
    """``value`` marked settled (``>``) when its second ended ``skew_seconds`` before the
    read began (by this host's clock: the allowance covers the directory's clock skew)."""
    import calendar

    if value is None or kind == "ad":
        return value
    bare = value.lstrip(">")
    try:
        second = calendar.timegm(time.strptime(bare[:14], "%Y%m%d%H%M%S"))
    except ValueError:
        return bare
    return ">" + bare if second + 1 + skew_seconds <= read_started else bare


def user_record(entry: Entry, settings: DirectorySettings) -> UserRecord:
    m = settings.mapping("users")
    limit = settings.max_value_length
    if len(entry.dn) > MAX_DN:
        raise Rejected(f"DN is longer than {MAX_DN} characters")
    username = text(entry, m.get("username"), "username", min(limit, 255), required=True)
    assert username is not None
    disabled = False
    control = text(entry, m.get("account_control"), "account control", 20)
    if control:
        try:
            disabled = bool(int(control) & 0x2)  # ACCOUNTDISABLE
        except ValueError:
            raise Rejected(f"account control ({m.get('account_control')}) is not a number") from None
    return UserRecord(external_id=external_id(entry, settings), dn=entry.dn, username=username,
                      email=text(entry, m.get("email"), "email", min(limit, 320)),
                      display_name=text(entry, m.get("display_name"), "display name", limit),
                      disabled=disabled)


MAX_MEMBERS = 100_000


def group_record(entry: Entry, settings: DirectorySettings) -> GroupRecord:
    m = settings.mapping("groups")
    limit = settings.max_value_length
    if len(entry.dn) > MAX_DN:
        raise Rejected(f"DN is longer than {MAX_DN} characters")
    name = text(entry, m.get("name"), "group name", min(limit, 255), required=True)
    assert name is not None
    members: list[str] = []
    raw_members = entry.values(m["member"]) if m.get("member") else []
    if len(raw_members) > MAX_MEMBERS:
        raise Rejected(f"{len(raw_members)} members, more than {MAX_MEMBERS}")
    for raw in raw_members:
        try:
            value = bytes(raw).decode("utf-8") if not isinstance(raw, str) else raw
        except UnicodeDecodeError:
            raise Rejected(f"a member ({m['member']}) is not valid UTF-8") from None
        if len(value) > MAX_DN:
            raise Rejected(f"a member DN is longer than {MAX_DN} characters")
        members.append(dn_key(value))
    return GroupRecord(external_id=external_id(entry, settings), dn=entry.dn, name=name,
                       description=text(entry, m.get("description"), "description", limit,
                                        control_ok=True),
                       members=members)


def computer_record(entry: Entry, settings: DirectorySettings) -> ComputerRecord:
    m = settings.mapping("computers")
    limit = settings.max_value_length
    if len(entry.dn) > MAX_DN:
        raise Rejected(f"DN is longer than {MAX_DN} characters")
    name = text(entry, m.get("name"), "computer name", min(limit, 255), required=True)
    assert name is not None
    return ComputerRecord(external_id=external_id(entry, settings), dn=entry.dn, name=name,
                          address=text(entry, m.get("address"), "address", min(limit, 255)),
                          operating_system=text(entry, m.get("operating_system"),
                                                "operating system", limit, control_ok=True))
