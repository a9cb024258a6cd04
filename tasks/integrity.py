"""Audit log sealing tasks: ``pamflow.audit_seal`` wrapped for Prefect (the vault opened
in the worker's process; the key never leaves it)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pamflow.audit_seal import LogCheck, SealMade


def _store():
    from pamflow.db import store

    return store()


@task(name="verify-recent-seals", cache_policy=NO_CACHE)
def verify_recent_seals(blocks: int) -> LogCheck:
    """Check every seal's signature and chain, and the rows of the last ``blocks`` blocks
    and those not yet sealed."""
    from sqlmodel import Session

    from pamflow.audit_seal import public_keys, verify_log
    from pamflow.vault import vault

    with Session(_store()) as db:
        return verify_log(db, keys=public_keys(db, vault()), last_blocks=blocks)


@task(name="seal-audit-log", cache_policy=NO_CACHE)
def seal_audit_log(block_rows: int) -> list[SealMade]:
    from pamflow.audit_seal import seal
    from pamflow.vault import vault

    return seal(_store(), vault(), block_rows=block_rows)


def broken_notice(check: LogCheck) -> tuple[str, str]:
    """Subject and body of the "Audit trail" notification when the seals do not hold."""
    where = (f"entry {check.broken_at}" if check.broken_at is not None else "the seals")
    seal = f" (seal #{check.seal_broken})" if check.seal_broken else ""
    return (f"Audit trail: the audit log does not hold at {where}{seal}",
            f"The tamper-proof log robot found the sealed audit log altered at {where}{seal}: "
            f"{check.reason}. Nothing was sealed. Run `pamflow audit verify` and investigate "
            "who wrote to the store directly.")


@task(name="report-broken-seal", cache_policy=NO_CACHE)
def report_broken_seal(check: LogCheck) -> None:
    """Queue the "Audit trail" notification and audit the finding (one transaction)."""
    from sqlmodel import Session

    from pamflow import audit, notifications

    subject, body = broken_notice(check)
    with Session(_store()) as db:
        notifications.queue(db, "Audit trail", subject, body,
                            {"broken_at": check.broken_at, "seal": check.seal_broken,
                             "reason": check.reason})
        audit.record(db, "robot:tamper-proof-log", "audit.seal_broken", "audit_seal",
                     check.seal_broken, {"broken_at": check.broken_at, "reason": check.reason})
        db.commit()
