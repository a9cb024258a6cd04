"""LDAP/AD synchronization and access groups processing against a real slapd: thousands of
users over paged search, incremental runs that read only what changed, users who leave
disabled (never deleted), hostile names, TLS, and a directory that refuses or is down."""

from __future__ import annotations

import logging
import time

import pytest
from sqlmodel import Session, col, func, select

from pamflow.directory import (
    DirectoryBindRefused,
    DirectorySettingsError,
    DirectoryUnavailable,
    apply_read,
    bind_password,
    compile_access,
    read_directory,
)
from pamflow.directory.records import dn_key
from pamflow.models import AccessGroup, AccessGroupMember, AuditLog, DirectorySyncState, User
from tests.directory_helpers import (
    fresh_slapd,
    ldap_tool,
    ldif,
    people,
    register_bind,
    settings_for,
    user_dn,
)

pytestmark = pytest.mark.usefixtures("needs_slapd")


@pytest.fixture
def corp():
    server = fresh_slapd()
    try:
        yield server
    finally:
        server.stop()


def sync(engine, st, full=False, username=None):
    read = read_directory(engine, st, bind_password(engine, st), full=full, username=username)
    return apply_read(engine, read, "test",
                      compile_access=lambda e, ids: compile_access(e, ids).changed)


def users(engine) -> dict[str, User]:
    with Session(engine) as db:
        return {u.username: u for u in db.exec(select(User))}


def store_snapshot(engine) -> tuple:
    with Session(engine) as db:
        return (sorted((u.username, u.status, u.email) for u in db.exec(select(User))),
                db.exec(select(func.count()).select_from(AccessGroup)).one(),
                db.exec(select(func.count()).select_from(AccessGroupMember)).one(),
                db.exec(select(func.count()).select_from(AuditLog)).one(),
                sorted((s.key, s.mark) for s in db.exec(select(DirectorySyncState))))


def test_thousands_paged_then_incremental_reads_only_changes(store, corp):
    names = [f"user{i:05d}" for i in range(3000)]
    dns = people(corp, names)
    groups = [(f"cn=team{g},ou=groups,{corp.suffix}",
               {"objectClass": "groupOfNames", "cn": f"team{g}",
                "member": dns[g * 100:(g + 1) * 100]}) for g in range(5)]
    ldap_tool(corp, "ldapadd", ldif(groups))
    register_bind(store, corp)
    # no clock skew between this host and slapd: once the load's last second is over, the
    # full run's mark is settled and the next run reads strictly after it
    st = settings_for(corp, clock_skew_seconds=0)
    time.sleep(1.1)

    full = sync(store, st)
    assert full.mode == "full" and full.created == 3000 and full.rejected == []
    assert full.pages >= 3000 // st.page_size  # paged: many pages of 250
    assert full.groups_created == 5 and full.memberships_added == 500
    with Session(store) as db:
        assert db.exec(select(func.count()).select_from(User).where(
            col(User.status) == "active", col(User.directory) == "corp")).one() == 3000

    with Session(store) as db:
        assert all(s.mark.startswith(">") for s in db.exec(select(DirectorySyncState)))
    ldap_tool(corp, "ldapmodify", "".join(
        f"dn: {dns[i]}\nchangetype: modify\nreplace: mail\nmail: new{i}@corp.test\n\n"
        for i in range(5)))
    people(corp, ["newbie1", "newbie2", "newbie3"])
    ldap_tool(corp, "ldapdelete", "\n".join(dns[10:12]) + "\n")
    ldap_tool(corp, "ldapmodify", f"dn: {dns[20]}\nchangetype: modrdn\nnewrdn: uid={names[20]}\n"
                                  f"deleteoldrdn: 1\nnewsuperior: ou=former,{corp.suffix}\n\n")
    ldap_tool(corp, "ldapmodify", f"dn: {groups[0][0]}\nchangetype: modify\ndelete: member\n"
                                  f"member: {dns[1]}\n\n")

    inc = sync(store, st)
    assert inc.mode == "incremental"
    # read with attributes: the 5 changed + 3 new users and the changed group, nothing else
    assert inc.read == 9, inc.summary()
    assert inc.listed >= 2997  # the ids in scope, to notice who left
    assert (inc.created, inc.updated, inc.disabled) == (3, 5, 3)
    assert inc.memberships_removed == 1 and inc.groups_updated == 0
    found = users(store)
    assert len(found) == 3003  # nobody deleted
    for gone in (names[10], names[11], names[20]):
        assert found[gone].status == "disabled" and found[gone].disabled_at is not None
    assert found[names[0]].email == "new0@corp.test"
    assert found["newbie2"].status == "active"

    again = sync(store, st)  # nothing changed since: at most the new marks' second is read
    assert again.created == again.disabled == 0 and again.updated == 0 and again.read <= 9

    # without the listing, an incremental run reads only the changes; a full run disables
    quick = settings_for(corp, clock_skew_seconds=0, departures_every_run=False)
    ldap_tool(corp, "ldapdelete", dns[30] + "\n")
    fast = sync(store, quick)
    assert fast.mode == "incremental" and fast.listed == 0 and fast.disabled == 0
    assert users(store)[names[30]].status == "active"
    assert sync(store, quick, full=True).disabled == 1

    ldap_tool(corp, "ldapadd", ldif([(dns[10], {"objectClass": "inetOrgPerson", "uid": names[10],
                                                "cn": "back", "sn": "x"})]))
    back = sync(store, st, full=True)  # a full run on demand
    assert back.mode == "full" and back.reactivated == 1 and back.read >= 3000
    assert users(store)[names[10]].status == "active"
    with Session(store) as db:
        actions = {a.action for a in db.exec(select(AuditLog))}
    assert {"directory_users_synced", "directory_users_disabled",
            "directory_groups_synced"} <= actions


def test_hostile_names_are_just_names(store, corp):
    register_bind(store, corp)
    injected = "*)(uid=*"
    dn_shaped = "cn=admin,dc=pamflow,dc=test"
    odd = "a,b+c=d;\\e\"f<g>#h"
    for uid in (injected, dn_shaped, odd, "plain"):
        corp.add_entry(user_dn(corp, uid), ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": "x"})
    long_uid = "L" * 5000
    corp.add_entry(f"cn=long,ou=people,{corp.suffix}", ["inetOrgPerson"],
                   {"uid": long_uid, "cn": "long", "sn": "x"})
    corp.add_entry(f"cn=binary,ou=people,{corp.suffix}", ["inetOrgPerson"],
                   {"uid": "binary", "cn": "binary", "sn": "x", "audio": b"\xff\xfe\x00bad"})
    corp.add_entry(f"cn=bell,ou=people,{corp.suffix}", ["inetOrgPerson"],
                   {"uid": "bell\x07", "cn": "bell", "sn": "x"})
    corp.add_entry(f"cn=odd,ou=groups,{corp.suffix}", ["groupOfNames"], {
        "cn": "odd", "member": [user_dn(corp, u) for u in (injected, dn_shaped, odd)]})
    st = settings_for(corp, user_attributes={"display_name": "audio"})

    one = sync(store, st, username=injected)  # the filter is escaped: exactly that user
    assert one.mode == "single" and one.read == 1 and one.created == 1
    assert set(users(store)) == {injected}

    result = sync(store, st)
    found = users(store)
    assert {injected, dn_shaped, odd, "plain"} <= set(found)
    assert dn_key(found[dn_shaped].dn) == dn_key(user_dn(corp, dn_shaped))
    assert dn_key(found[dn_shaped].dn) != dn_key(corp.root_dn)
    assert result.memberships_added == 3  # member DNs as given match the DNs slapd answers
    reasons = {r.dn.split(",")[0]: r.reason for r in result.rejected}
    assert "more than the limit" in reasons["cn=long"]
    assert "not valid UTF-8" in reasons["cn=binary"]
    assert "control characters" in reasons["cn=bell"]
    assert "binary" not in found and long_uid not in found
    # a rejected entry is still in scope: a later run does not disable anything for it
    assert sync(store, st, full=True).disabled == 0


def test_refused_bind_or_down_directory_changes_nothing(store, corp):
    people(corp, ["alice", "bob"])
    register_bind(store, corp)
    st = settings_for(corp)
    sync(store, st)
    before = store_snapshot(store)
    with Session(store) as db:  # the vault now holds a wrong bind password
        from pamflow.models import Credential
        from tests.test_rotation import seal
        cred = db.exec(select(Credential)).one()
        cred.secret = seal(cred, "wrong-password")
        db.add(cred)
        db.commit()
    with pytest.raises(DirectoryBindRefused, match="refused the bind"):
        sync(store, st, full=True)
    assert store_snapshot(store) == before
    down = settings_for(corp, url="ldap://127.0.0.1:1")
    with pytest.raises(DirectoryUnavailable, match="cannot connect"):
        read_directory(store, down, "x")
    assert store_snapshot(store) == before


def test_tls_verified_by_default_cleartext_warned(store, corp, caplog):
    people(corp, ["alice"])
    register_bind(store, corp)
    ldaps = settings_for(corp, url=corp.ldaps_url, tls=None)
    assert ldaps.tls_mode == "ldaps" and sync(store, ldaps).created == 1
    untrusted = settings_for(corp, url=corp.ldaps_url, tls=None, ca_file=None)
    with pytest.raises(DirectoryUnavailable, match="not trusted"):
        read_directory(store, untrusted, corp.root_password)
    no_ca_starttls = settings_for(corp, ca_file=None)
    with pytest.raises(DirectoryUnavailable):
        read_directory(store, no_ca_starttls, corp.root_password)
    with caplog.at_level(logging.WARNING, logger="pamflow.directory"):
        read_directory(store, settings_for(corp, tls="none"), corp.root_password)
    assert "cleartext" in caplog.text and corp.root_password not in caplog.text
    for bad in ({"url": "http://x"}, {"url": corp.ldaps_url, "tls": "none"},
                {"user_filter": "(uid=*"}, {"user_filter": "uid=x)(cn=*"},
                {"user_base": "not a dn"}, {"user_attributes": {"username": "uid)(x"}},
                {"bind_secret_device": None}):
        with pytest.raises(DirectorySettingsError):
            settings_for(corp, **bad)


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_local_users_and_groups_are_never_taken_over(backend, request, corp):
    store = request.getfixturevalue(backend)
    with Session(store) as db:
        db.add(User(username="alice", source="local", granted={}))
        db.add(AccessGroup(name="ops", rules={}))
        db.commit()
    dns = people(corp, ["alice", "bob"])
    ldap_tool(corp, "ldapadd", ldif([(f"cn=ops,ou=groups,{corp.suffix}",
                                      {"objectClass": "groupOfNames", "cn": "ops", "member": dns})]))
    register_bind(store, corp)
    result = sync(store, settings_for(corp))
    reasons = " ".join(r.reason for r in result.rejected)
    assert "'alice' already belongs to a local user" in reasons
    assert "'ops' already belongs to a local access group" in reasons
    assert users(store)["alice"].source == "local" and users(store)["bob"].source == "ldap"


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_access_groups_compile_granted_access(backend, request, corp):
    store = request.getfixturevalue(backend)
    dns = people(corp, ["ann", "ben", "cy"])
    ldap_tool(corp, "ldapadd", ldif([
        (f"cn=web,ou=groups,{corp.suffix}", {"objectClass": "groupOfNames", "cn": "web",
                                             "member": dns[:2]}),
        (f"cn=db,ou=groups,{corp.suffix}", {"objectClass": "groupOfNames", "cn": "db",
                                            "member": dns[1:]})]))
    register_bind(store, corp)
    st = settings_for(corp)
    sync(store, st)
    with Session(store) as db:
        for g in db.exec(select(AccessGroup)):
            g.rules = ({"devices": ["web-*"], "protocols": ["ssh"]} if g.name == "web"
                       else {"devices": ["db-*"], "sites": ["paris"]})
            db.add(g)
        db.add(AccessGroup(name="broken", rules={"devices": "not-a-list"}))
        db.commit()
    result = compile_access(store)
    assert result.invalid_groups == [{"group": "broken",
                                      "reason": "rule 'devices' is not a list of at most 10000 values"}]
    found = users(store)
    assert found["ben"].granted == {"devices": ["db-*", "web-*"], "protocols": ["ssh"],
                                    "sites": ["paris"]}
    assert found["ann"].granted == {"devices": ["web-*"], "protocols": ["ssh"]}
    ldap_tool(corp, "ldapdelete", dns[1] + "\n")
    sync(store, st, full=True)  # ben left: disabled, and his access is gone at once
    assert users(store)["ben"].status == "disabled" and users(store)["ben"].granted == {}


def test_ad_shaped_entries_guid_and_disabled_accounts(store, corp):
    """AD's shapes on slapd (Microsoft's schema loaded): objectGUID (16 bytes, little-endian
    UUID), sAMAccountName, userAccountControl's ACCOUNTDISABLE bit. slapd has no ordering
    rule for uSNChanged, so only full runs are exercised here."""
    import uuid as uuidlib

    guid = uuidlib.uuid4()

    def ad_user(cn: str, **attrs) -> None:  # extensibleObject: sAMAccountName is in no class
        corp.add_entry(f"cn={cn},ou=people,{corp.suffix}", ["user", "extensibleObject"],
                       {"cn": cn, "sn": cn, "instanceType": "4",
                        "objectCategory": f"CN=Person,CN=Schema,CN=Configuration,{corp.suffix}",
                        "nTSecurityDescriptor": b"\x01\x00\x04\x80", **attrs})

    ad_user("Ann Admin", sAMAccountName="ann", objectGUID=guid.bytes_le,
            userAccountControl="512", displayName="Ann A.", mail="ann@corp.test")
    ad_user("Old Timer", sAMAccountName="old", objectGUID=uuidlib.uuid4().bytes_le,
            userAccountControl="514")
    ad_user("Weird", sAMAccountName="weird", objectGUID=b"short", employeeType="lots")
    register_bind(store, corp)
    st = settings_for(corp, kind="ad", user_filter="(objectClass=user)", group_base=None)
    result = sync(store, st)
    assert (result.created, result.disabled) == (3, 0), result.rejected
    weird = settings_for(corp, kind="ad", user_filter="(cn=Weird)", group_base=None,
                         name="weird", user_attributes={"account_control": "employeeType"})
    assert [r.reason for r in sync(store, weird).rejected] == [
        "account control (employeeType) is not a number"]
    found = users(store)
    assert found["ann"].external_id == str(guid) and found["ann"].display_name == "Ann A."
    assert found["ann"].status == "active" and found["old"].status == "disabled"
    with corp.connection() as conn:
        conn.modify(f"cn=Ann Admin,ou=people,{corp.suffix}",
                    {"userAccountControl": [("MODIFY_REPLACE", ["514"])]})
    again = sync(store, st, full=True)
    assert again.disabled == 1 and users(store)["ann"].status == "disabled"
