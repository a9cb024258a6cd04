"""The store's engine, sessions and migrations (Alembic, run programmatically).

``store()`` returns the process-wide engine for ``PAMFLOW_DATABASE_URL`` (or the embedded
SQLite file) with the schema migrated to head. ``session()`` is a context-managed
SQLModel session on it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from . import models  # noqa: F401  (registers the tables)
from .config import database_url

MIGRATIONS = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def make_engine(url: str) -> Engine:
    """An engine with the settings pamflow needs on each backend."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _alembic_config(connection: sa.Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")


def store(url: str | None = None) -> Engine:
    """The shared, migrated engine for ``url`` (default: the configured database)."""
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(url)
            migrate(engine)
            _engines[url] = engine
        return engine


def reset_engines() -> None:
    """Forget cached engines (tests switch databases between cases)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session(engine: Engine | None = None) -> Iterator[Session]:
    """A session on the store; committed by the caller, rolled back on error."""
    with Session(engine or store(), expire_on_commit=False) as s:
        try:
            yield s
        except BaseException:
            s.rollback()
            raise


def regenerate_initial_migration() -> Path:
    """Rewrite migration 0001 from the models (only while no release has shipped).

    Autogenerates against an empty in-memory SQLite database, so the result is the same
    whoever runs it, and works on PostgreSQL too (generic types only).
    """
    from alembic import command

    target = MIGRATIONS / "versions" / "0001_initial.py"
    target.unlink(missing_ok=True)
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        cfg = _alembic_config(conn)
        command.revision(cfg, message="initial", autogenerate=True, rev_id="0001")
    produced = next((MIGRATIONS / "versions").glob("0001_*.py"))
    if produced != target:
        produced.rename(target)
    text = target.read_text().replace("sqlmodel.sql.sqltypes.AutoString()", "sa.String()")
    target.write_text(text)
    return target


def _main(argv: list[str]) -> int:
    if argv[:1] == ["regen-initial"]:
        print(regenerate_initial_migration())
        return 0
    print("usage: python -m pamflow.db regen-initial", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main(sys.argv[1:]))

__all__ = ["SQLModel", "make_engine", "migrate", "regenerate_initial_migration", "reset_engines",
           "session", "store"]
