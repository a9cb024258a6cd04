"""Tamper-proof log sealing (tamperprooflogjob): seals old log records.

Each run first checks the last sealed blocks (and every seal's signature): when they do
not hold it raises the "Audit trail" notification and fails, sealing nothing; otherwise
it seals the audit rows written since the last seal, in blocks. The rules live in
``pamflow.audit_seal``; the signing key is kept by pamflow's vault.
"""

from __future__ import annotations

from prefect import flow

from pamflow.errors import PamflowError
from tasks.integrity import report_broken_seal, seal_audit_log, verify_recent_seals
from tasks.operations import publish_table


class AuditLogAltered(PamflowError):
    """The sealed audit log does not hold."""


@flow(name="tamper-proof-log")
def tamper_proof_log(block_rows: int = 5000, verify_blocks: int = 3) -> dict:
    """Tamper-proof log job: seals old log records (and the log records created by other
    applications), after checking that the last ``verify_blocks`` sealed blocks still hold."""
    check = verify_recent_seals(verify_blocks)
    if not check.intact:
        report_broken_seal(check)
        publish_table("tamper-proof-log", [check.as_dict()], "the audit log does not hold: "
                      "nothing sealed, Audit trail notification queued")
        raise AuditLogAltered(f"audit log broken at entry {check.broken_at} (seal "
                              f"#{check.seal_broken}): {check.reason}")
    made = seal_audit_log(block_rows)
    publish_table("tamper-proof-log", made,
                  f"{len(made)} block(s) sealed ({sum(m.count for m in made)} entries); "
                  f"last {verify_blocks} block(s) verified")
    return {"sealed": [m.number for m in made], "entries": sum(m.count for m in made),
            "verified_rows": check.rows}
