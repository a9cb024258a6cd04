"""What the protocol works with: the executor's context (store, lease, vault, policies), one
operation's work item, and loading them from the store (bad data becomes a Problem)."""


from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..models import (
    Credential,
    CredentialHistory,
    CredentialStatus,
    Device,
    Operation,
    OperationKind,
    SystemParameter,
    row_id,
)
from ..passwords import PasswordPolicy, at_floor
from ..targets import DEFAULT_PORTS, get_target, protocol_for
from ..targets.base import Endpoint, Login, PasswordTarget, TargetError, Unreachable
from ..vault import Vault, VaultError, credential_aad, vault

log = logging.getLogger(__name__)


STEPS = ("claimed", "pending_stored", "applied", "verified", "promoted")
DEFAULT_TIMEOUT = 20.0
UNCONFIRMED = "unconfirmed pending"  # history reason prefix of a pending secret set aside
UNCONFIRMED_TRIED = 3  # how many of them reconciliation tries (newest first)
# target steps at which nothing can have been changed yet (an error there clears pending)
PRE_APPLY_STEPS = {"", "connect", "login", "admin login", "validate", "select target", "bind",
                   "admin bind", "negotiate", "host key"}


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# where named password policies come from besides the store (the Prefect layer: blocks)
PolicySource = Callable[[str], PasswordPolicy | None]


@dataclass
class Context:
    """What one executor brings to the protocol: its store, lease owner and limits."""

    engine: Engine
    owner: str | None = None
    workers: int = 16
    timeout: float = field(default_factory=lambda: float(
        os.environ.get("PAMFLOW_TARGET_TIMEOUT") or DEFAULT_TIMEOUT))
    actor: str = "robot:operation-executor"
    vault: Vault = field(default_factory=vault)
    stop: threading.Event | None = None  # set: give back what has not started on a target
    policy_source: PolicySource | None = None  # named policies from outside the store
    lost: set[int] = field(default_factory=set)  # operations whose lease the heartbeat lost
    _policies: dict = field(default_factory=dict)

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def keep(self, works: Sequence[Work]) -> list[Work]:
        """The works whose lease is not known to be lost."""
        if not self.lost:
            return list(works)
        dropped = [w.op_id for w in works if w.op_id in self.lost]
        if dropped:
            log.warning("%s: dropping %d operation(s) whose lease was lost: %s", self.owner,
                        len(dropped), dropped[:20])
        return [w for w in works if w.op_id not in self.lost]

    def target(self, protocol: str) -> PasswordTarget:
        return get_target(protocol, self.engine)

    def policy(self, db: Session, name: str) -> PasswordPolicy:
        """The password policy ``name``: from ``policy_source`` (the Prefect layer passes the
        policy blocks edited in the UI; never below the store's floor), else the system
        parameter ``password_policy.<name>``, else the default policy."""
        if name not in self._policies:
            policy = None
            if self.policy_source is not None:
                policy = at_floor(db, self.policy_source(name))  # never below the floor
            if policy is None:
                row = db.get(SystemParameter, f"password_policy.{name}")
                if row is None:
                    policy = PasswordPolicy(name=name)
                else:
                    policy = PasswordPolicy.from_dict({**json.loads(row.value), "name": name})
            self._policies[name] = policy
        return self._policies[name]

    def pool(self, n: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=max(1, min(self.workers, n)),
                                  thread_name_prefix="pamflow-target")


@dataclass
class Work:
    """One operation in flight: its account, device, endpoint and (in memory) secrets."""

    op_id: int
    kind: str
    credential_id: int
    device_id: int
    device: str
    username: str
    protocol: str
    endpoint: Endpoint
    admin: Login | None = None
    reconciler: Login | None = None
    current: str | None = field(default=None, repr=False)
    pending: str | None = field(default=None, repr=False)
    pending_cipher: str | None = field(default=None, repr=False)
    pending_is_mine: bool = False
    status: str = CredentialStatus.ok
    policy: str = "default"
    parameters: dict = field(default_factory=dict)
    new: str | None = field(default=None, repr=False)
    step: str | None = None
    epoch: int = 0  # the lease epoch of this executor's claim (the fencing token)
    unconfirmed: list[str] = field(default_factory=list, repr=False)  # set-aside pendings
    reconcile_error: str | None = None  # why the reconcile account could not set the password

    @property
    def secrets(self) -> list[str]:
        out = [self.current, self.pending, self.new]
        if self.admin:
            out.append(self.admin.secret)
        if self.reconciler:
            out.append(self.reconciler.secret)
        return [s for s in out if s]

    def where(self, step: str) -> str:
        return f"account {self.username} on device {self.device} at step {step}"

    def context(self) -> dict:
        return {"operation_id": self.op_id, "credential_id": self.credential_id,
                "device_id": self.device_id, "device": self.device, "account": self.username}


@dataclass
class Problem:
    """An operation that cannot even start (bad data): closed with a clear error.

    ``attention``: the credential's own data is at fault (an undecryptable secret, an
    admin credential without a password, no target for the platform); trying again will
    fail the same way until someone changes it, so the credential is flagged.
    """

    op: Operation
    error: str
    device: str = ""
    account: str = ""
    retryable: bool = False
    attention: bool = False


def _describe(exc: BaseException, secrets: Sequence[str]) -> str:
    text = str(exc) if isinstance(exc, TargetError | VaultError) else f"{type(exc).__name__}: {exc}"
    return _scrub(text, secrets)[:1000]


def _outcome_unknown(exc: BaseException) -> bool:
    """Could the target have changed the password before this error? (True: maybe.)"""
    if isinstance(exc, Unreachable):
        return getattr(exc, "step", "") not in PRE_APPLY_STEPS
    return not isinstance(exc, TargetError)  # a bug mid-apply: assume the worst


# the ports each change protocol listens on, preferred first
PROTOCOL_PORTS = {"ssh": (22,), "winrm": (5986, 5985), "ldap": (636, 389)}


def _endpoint(device: Device, protocol: str) -> Endpoint:
    """Where to reach ``device`` for ``protocol``: the ``port`` setting, else the device's
    port that protocol usually listens on (a Windows device probed on 5985 and 3389 is
    changed over 5985, not RDP), else its first port, else the protocol's default."""
    settings = dict(device.settings or {})
    ports = list(device.ports or [])
    usual = [p for p in PROTOCOL_PORTS.get(protocol, ()) if p in ports]
    port = settings.get("port") or (usual[0] if usual else ports[0] if ports
                                    else DEFAULT_PORTS.get(protocol, 0))
    return Endpoint(device_id=row_id(device), name=device.name, address=device.address, port=int(port),
                    settings=settings)


def load(ctx: Context, ops: Sequence[Operation]) -> tuple[list[Work], list[Problem]]:
    """Resolve operations to work items; bad data becomes ``Problem``s naming what is wrong."""
    works: list[Work] = []
    problems: list[Problem] = []
    v = ctx.vault
    with Session(ctx.engine, expire_on_commit=False) as db:
        cred_ids = {op.credential_id for op in ops if op.credential_id is not None}
        creds = {c.id: c for c in db.exec(select(Credential).where(col(Credential.id).in_(cred_ids)))} \
            if cred_ids else {}
        dev_ids = {c.device_id for c in creds.values()} | {op.device_id for op in ops if op.device_id}
        devices = {d.id: d for d in db.exec(select(Device).where(col(Device.id).in_(dev_ids)))} \
            if dev_ids else {}
        extra_ids = {i for d in devices.values()
                     for i in (d.admin_credential_id, d.reconcile_credential_id) if i}
        extra_ids -= set(creds)
        if extra_ids:
            creds.update({c.id: c for c in db.exec(select(Credential).where(
                col(Credential.id).in_(extra_ids)))})
        for op in ops:
            if op.credential_id is None:
                dev = devices.get(op.device_id) if op.device_id else None
                if op.device_id and dev is None:
                    problems.append(Problem(op, f"{op.kind} operation {op.id}: unknown device "
                                                f"{op.device_id} (step load)"))
                elif dev is not None:
                    has = db.exec(select(sa.func.count()).select_from(Credential).where(
                        col(Credential.device_id) == dev.id)).one()
                    what = "has no credentials" if not has else "names no credential"
                    problems.append(Problem(op, f"{op.kind} operation {op.id}: device {dev.name} "
                                                f"{what} to {op.kind} (step load)", dev.name))
                else:
                    problems.append(Problem(op, f"{op.kind} operation {op.id} names no device and "
                                                "no credential (step load)"))
                continue
            cred = creds.get(op.credential_id)
            if cred is None:
                problems.append(Problem(op, f"{op.kind} operation {op.id}: unknown credential "
                                            f"{op.credential_id} (step load)"))
                continue
            dev = devices.get(cred.device_id)
            if dev is None or (op.device_id and op.device_id != cred.device_id):
                problems.append(Problem(op, f"{op.kind} operation {op.id}: unknown device "
                                            f"{op.device_id or cred.device_id} for account "
                                            f"{cred.username} (step load)", "", cred.username))
                continue
            try:
                protocol = protocol_for(dev)
                admin = reconciler = None
                if dev.admin_credential_id:
                    admin = _login(v, creds.get(dev.admin_credential_id), dev, "admin")
                if dev.reconcile_credential_id:
                    reconciler = _login(v, creds.get(dev.reconcile_credential_id), dev,
                                        "reconcile")
                current = v.decrypt(cred.secret, _aad(cred, "secret")) if cred.secret else None
                pending = (v.decrypt(cred.pending_secret, _aad(cred, "pending"))
                           if cred.pending_secret else None)
            except (TargetError, VaultError) as exc:
                problems.append(Problem(op, f"{op.kind} of account {cred.username} on device "
                                            f"{dev.name} failed at step load: {exc}", dev.name,
                                        cred.username, attention=True))
                continue
            if not dev.active:
                problems.append(Problem(op, f"{op.kind} of account {cred.username} on device "
                                            f"{dev.name} refused at step load: the device is "
                                            "inactive", dev.name, cred.username))
                continue
            works.append(Work(
                op_id=row_id(op), kind=op.kind, credential_id=row_id(cred), device_id=row_id(dev),
                device=dev.name, username=cred.username, protocol=protocol,
                endpoint=_endpoint(dev, protocol), admin=admin, reconciler=reconciler,
                current=current, pending=pending, pending_cipher=cred.pending_secret,
                pending_is_mine=cred.pending_operation_id == op.id, status=cred.status,
                policy=cred.policy or "default", parameters=dict(op.parameters or {}),
                step=op.step, epoch=op.lease_epoch))
        _load_unconfirmed(db, works)
    return works, problems


def _load_unconfirmed(db: Session, works: list[Work]) -> None:
    """The newest set-aside pending secrets of credentials reconciliation may settle."""
    settling = {w.credential_id: w for w in works
                if w.pending or w.kind in (OperationKind.reconcile, OperationKind.verify)
                or w.status in (CredentialStatus.unverified, CredentialStatus.invalid)}
    if not settling:
        return
    rows = db.exec(select(col(CredentialHistory.credential_id), col(CredentialHistory.secret)).where(
        col(CredentialHistory.credential_id).in_(list(settling)),
        col(CredentialHistory.reason).like(f"{UNCONFIRMED}%")).order_by(col(CredentialHistory.id).desc())
    ).all()
    for cred_id, cipher in rows:
        w = settling[cred_id]
        if len(w.unconfirmed) < UNCONFIRMED_TRIED:
            w.unconfirmed.append(cipher)


def _login(v: Vault, cred: Credential | None, dev: Device, role: str) -> Login:
    if cred is None or not cred.secret:
        raise TargetError(f"the {role} credential of the device is missing or has no password",
                          device=dev.name, step="load")
    return Login(cred.username, v.decrypt(cred.secret, _aad(cred, "secret")))


def _aad(cred: Credential, field: str) -> bytes:
    return credential_aad(cred.id, cred.device_id, field)



# ----------------------------------------------------------------------------- target calls
def _verify(ctx: Context, w: Work, secret: str) -> bool:
    return ctx.target(w.protocol).verify(w.endpoint, Login(w.username, secret), ctx.timeout)


def _parallel(ctx: Context, works: Sequence[Work], fn: Callable[[Work], object]) -> list:
    """``fn(work)`` for each work concurrently; exceptions are returned, not raised."""
    def guarded(w: Work):
        try:
            return fn(w)
        except BaseException as exc:  # noqa: BLE001 - reported per work
            return exc
    if not works:
        return []
    if len(works) == 1:
        return [guarded(works[0])]
    with ctx.pool(len(works)) as pool:
        return list(pool.map(guarded, works))



def _aad_of(w: Work, field: str) -> bytes:
    return credential_aad(w.credential_id, w.device_id, field)
