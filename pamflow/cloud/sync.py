"""Listing an account's instances and writing them as devices of its tenant.

A run lists everything first; only a complete listing is written, in one transaction:

- an instance seen for the first time becomes a device (``source`` = the provider,
  ``source_account`` = the account, ``external_id`` = the instance id);
- a known one gets its name, address, platform, region (``site``), tags and state
  refreshed; a device marked removed that shows up again is restored;
- a device of this account whose instance is no longer listed (terminated, deleted, or
  no longer matching the account's filters) is marked removed: ``active`` false,
  ``instance_state`` "removed", ``removed_at`` set. It is never deleted, and its
  credentials stay.

An instance without the chosen address (a public address asked for and none assigned),
or whose address another device of the tenant holds, is skipped with the reason; a
skipped instance that is already a device keeps its device as it was (not removed).
Every change is audited.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlmodel import Session, col, select

from .. import audit, db
from ..models import Device, SystemParameter, row_id, utcnow
from ..vault_entries import VaultEntryError, read_entry
from .model import Change, CloudAccount, CloudError, CloudInstance, ImportResult, Rejected, in_regions

log = logging.getLogger(__name__)

CHANGES_KEPT = 1000
IN_CHUNK = 500
ACTOR = "robot:cloud-device-import"


def resolve_secrets(account: CloudAccount) -> dict[str, str] | None:
    """The account's vault entry values (for its tenant), or None for the SDK's own chain."""
    if account.credentials != "vault":
        return None
    assert account.vault_entry is not None  # CloudAccount.check()
    try:
        with db.session() as s:
            return read_entry(s, account.vault_entry, tenant=account.tenant)
    except VaultEntryError as exc:
        raise CloudError(f"cloud account {account.name}: {exc}") from None


def listing(account: CloudAccount, secrets: dict[str, str] | None
            ) -> Iterator[CloudInstance | Rejected]:
    from importlib import import_module

    module = import_module(f"{__package__}.{account.provider}")
    items: Iterator[CloudInstance | Rejected] = module.list_instances(account, secrets)
    return items


def list_account(account: CloudAccount) -> tuple[list[CloudInstance], list[Rejected]]:
    """The complete listing of ``account`` (filters applied), or CloudError."""
    account.check()
    if account.cleartext:
        log.warning("cloud account %s: cleartext endpoint %s (allow_cleartext is set)",
                    account.name, account.endpoint_url)
    from .model import matches

    secrets = resolve_secrets(account)
    found: list[CloudInstance] = []
    rejected: list[Rejected] = []
    seen = 0
    for item in listing(account, secrets):
        seen += 1
        if seen > account.max_instances:
            raise CloudError(f"cloud account {account.name}: more than {account.max_instances} "
                             "instances listed (max_instances): nothing imported")
        if isinstance(item, Rejected):
            rejected.append(item)
        elif matches(item, account) and (account.provider == "aws"
                                         or in_regions(item.region, account.regions)):
            found.append(item)
    return found, rejected


def _holders(s: Session, tenant: str, addresses: Iterable[str]) -> dict[str, int]:
    """address -> device id, for the devices of ``tenant`` holding any of ``addresses``."""
    wanted = sorted(set(addresses))
    held: dict[str, int] = {}
    for i in range(0, len(wanted), IN_CHUNK):
        rows = s.exec(select(Device.address, Device.id).where(
            col(Device.tenant) == tenant, col(Device.address).in_(wanted[i:i + IN_CHUNK])))
        held.update({a: d for a, d in rows if d is not None})
    return held


def _note(result: ImportResult, change: Change) -> None:
    if len(result.changes) < CHANGES_KEPT:
        result.changes.append(change)


def write_devices(account: CloudAccount, instances: list[CloudInstance],
                  rejected: list[Rejected] | None = None, *, actor: str = ACTOR) -> ImportResult:
    """Upsert ``instances`` as the devices of ``account`` and mark the missing ones removed,
    in one transaction (nothing is written when any step fails)."""
    result = ImportResult(account=account.name, provider=account.provider, tenant=account.tenant,
                          listed=len(instances) + len(rejected or []))
    for r in rejected or []:
        result.skipped += 1
        _note(result, Change("skipped", r.external_id, "", None, r.reason))
    now = utcnow()
    with db.session() as s:
        existing = {d.external_id: d for d in s.exec(select(Device).where(
            col(Device.tenant) == account.tenant, col(Device.source) == account.provider,
            col(Device.source_account) == account.name))}
        holders = _holders(s, account.tenant,
                           (a for i in instances if (a := i.address_for(account.address))))
        seen: set[str] = set()
        added: list[Device] = []
        claimed: dict[str, str] = {}  # address -> instance that takes it in this run
        for inst in instances:
            if inst.external_id in seen:
                result.skipped += 1
                _note(result, Change("skipped", inst.external_id, inst.name, None,
                                     "listed twice"))
                continue
            seen.add(inst.external_id)
            dev = existing.get(inst.external_id)
            address = inst.address_for(account.address)
            if address is None and dev is None:
                result.skipped += 1
                _note(result, Change("skipped", inst.external_id, inst.name, None,
                                     f"no {account.address} address"))
                continue
            holder = holders.get(address) if address else None
            if holder is not None and (dev is None or holder != dev.id):
                result.skipped += 1
                _note(result, Change("skipped", inst.external_id, inst.name, address,
                                     f"address held by device #{holder}"))
                continue
            if address is not None and address in claimed and (dev is None
                                                                 or address != dev.address):
                result.skipped += 1
                _note(result, Change("skipped", inst.external_id, inst.name, address,
                                     f"address taken by instance {claimed[address]} in this run"))
                continue
            if dev is None:
                assert address is not None
                added.append(Device(
                    name=inst.name, address=address, platform=inst.platform, site=inst.region,
                    tenant=account.tenant, source=account.provider, source_account=account.name,
                    external_id=inst.external_id, tags=inst.tags, instance_state=inst.state,
                    last_seen_at=now))
                claimed[address] = inst.external_id
                continue
            wanted = {"name": inst.name, "platform": inst.platform, "site": inst.region,
                      "tags": inst.tags, "instance_state": inst.state, "active": True,
                      "removed_at": None}
            if address is not None:
                wanted["address"] = address
            changed = {k: v for k, v in wanted.items() if getattr(dev, k) != v}
            dev.last_seen_at = now
            if not changed:
                result.unchanged += 1
                continue
            restored = dev.instance_state == "removed"
            if "address" in changed and address is not None:
                holders.pop(dev.address, None)
                claimed[address] = inst.external_id
            for k, v in changed.items():
                setattr(dev, k, v)
            dev.updated_at = now
            result.updated += 1
            _note(result, Change("restored" if restored else "updated", inst.external_id,
                                 inst.name, dev.address, ", ".join(sorted(changed))))
            audit.record(s, actor, "device.cloud_restored" if restored else "device.cloud_updated",
                         "device", dev.id, {"account": account.name,
                                            "external_id": inst.external_id,
                                            "fields": sorted(changed)})
        s.flush()  # updates first: an address a known device left may be a new device's
        s.add_all(added)
        s.flush()  # one batch of INSERTs for the new devices, then their audit records
        for dev in added:
            result.added += 1
            _note(result, Change("added", dev.external_id or "", dev.name, dev.address))
            audit.record(s, actor, "device.cloud_added", "device", row_id(dev),
                         {"account": account.name, "provider": account.provider,
                          "external_id": dev.external_id, "address": dev.address,
                          "tenant": account.tenant})
        for ext, dev in existing.items():
            if ext in seen or dev.instance_state == "removed":
                continue
            dev.active, dev.instance_state, dev.removed_at, dev.updated_at = False, "removed", now, now
            result.removed += 1
            _note(result, Change("removed", ext or "", dev.name, dev.address))
            audit.record(s, actor, "device.cloud_removed", "device", dev.id,
                         {"account": account.name, "external_id": ext})
        _record_run(s, account, result, actor)
        s.commit()
    return result


def _record_run(s: Session, account: CloudAccount, result: ImportResult, actor: str) -> None:
    key = f"cloud_import.last.{account.name}"
    row = s.get(SystemParameter, key) or SystemParameter(key=key, value="")
    row.value, row.updated_at = utcnow().isoformat(), utcnow()
    row.description = f"last complete cloud device import of account {account.name}"
    s.add(row)
    audit.record(s, actor, "cloud.import", "cloud_account", account.name, result.summary())


def last_import(account_name: str) -> datetime | None:
    """When ``account_name`` was last imported completely, or None."""
    with db.session() as s:
        row = s.get(SystemParameter, f"cloud_import.last.{account_name}")
    if row is None:
        return None
    try:
        return datetime.fromisoformat(row.value)
    except ValueError:
        return None


def import_account(account: CloudAccount, *, actor: str = ACTOR) -> ImportResult:
    """List ``account`` completely, then write it (see the module's docstring)."""
    instances, rejected = list_account(account)
    return write_devices(account, instances, rejected, actor=actor)
