"""``python -m pamflow.prefect_server server start …``: Prefect's own CLI, with every SQLite
write transaction of the server begun ``IMMEDIATE``.

Why (issue 15): Prefect 3.8 runs SQLite in WAL mode with a 60 s busy timeout, and begins its
transactions ``DEFERRED`` unless it reads for update
(``prefect/server/database/configurations.py``, ``begin_transaction``). A deferred
transaction that has read, and then writes after another connection committed, cannot wait
for the lock: SQLite answers ``SQLITE_BUSY`` at once whatever the busy timeout ("database is
locked": worker heartbeats, the task-run recorder, automation buckets, state validation).
Prefect's own comment there names the cure, ``IMMEDIATE`` mode for such transactions: the
write lock is taken at ``BEGIN``, where the busy timeout applies, so concurrent writers
queue instead of failing. Reads outside a transaction (most API reads) are unaffected: WAL
readers never wait for the writer.

Only the embedded SQLite server started by ``pamflow.platform.start_server`` runs this way; a
PostgreSQL-backed Prefect is untouched (the patch is on the SQLite configuration class).
"""

from __future__ import annotations

import contextlib
import sys


def patch_sqlite_transactions() -> None:
    """Make ``AioSqliteConfiguration.begin_transaction`` always ``BEGIN IMMEDIATE``."""
    from prefect.server.database import configurations

    cls = configurations.AioSqliteConfiguration
    if getattr(cls.begin_transaction, "_pamflow_immediate", False):
        return
    original = cls.begin_transaction

    @contextlib.asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False):
        async with original(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_transaction._pamflow_immediate = True  # type: ignore[attr-defined]
    cls.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main() -> int:
    patch_sqlite_transactions()
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
