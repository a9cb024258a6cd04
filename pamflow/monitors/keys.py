"""Primary key monitor (seed 000): "Monitors the database primary key and warning if its
value is close to reaching" its maximum.

For each table of the store with one integer primary key, the highest value used so far
(PostgreSQL: the key's sequence, or the highest key when rows were written past it;
SQLite: the highest key) is compared with the largest value the key can take (the
column's type; PostgreSQL: the sequence's own maximum when lower). At ``key_high_percent``
(80 %) and ``key_critical_percent`` (95 %) used, "Primary key near its maximum" is queued,
once per level.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from .levels import track_level
from .settings import MonitorSettings

TYPE_MAX = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}
SQLITE_MAX = 2**63 - 1
NOTIFICATION = "Primary key near its maximum"


@dataclass(frozen=True)
class KeyUsage:
    table: str
    column: str
    current: int
    maximum: int
    level: int = 0
    alert: str | None = None

    @property
    def percent(self) -> float:
        return round(100.0 * self.current / self.maximum, 4) if self.maximum else 100.0


@dataclass
class KeysReport:
    keys: list[KeyUsage] = field(default_factory=list)

    @property
    def alerts(self) -> list[str]:
        return [f"{k.alert}: {k.table}.{k.column} {k.percent:.1f} %" for k in self.keys if k.alert]


def _type_max(column_type: sa.types.TypeEngine) -> int | None:
    if isinstance(column_type, sa.SmallInteger):
        return TYPE_MAX["smallint"]
    if isinstance(column_type, sa.BigInteger):
        return TYPE_MAX["bigint"]
    if isinstance(column_type, sa.Integer):
        return TYPE_MAX["integer"]
    return None


def key_usage(engine: Engine) -> list[KeyUsage]:
    """Every single-column integer primary key of the store and how far it has come."""
    inspector = sa.inspect(engine)
    found: list[KeyUsage] = []
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        for table in sorted(inspector.get_table_names()):
            if table == "alembic_version":
                continue
            pk = inspector.get_pk_constraint(table).get("constrained_columns") or []
            if len(pk) != 1:
                continue
            column = next(c for c in inspector.get_columns(table) if c["name"] == pk[0])
            limit = _type_max(column["type"])
            if limit is None:
                continue
            if not postgres:
                limit = SQLITE_MAX  # an INTEGER PRIMARY KEY is the 64-bit rowid
            quoted_table = engine.dialect.identifier_preparer.quote(table)
            quoted_col = engine.dialect.identifier_preparer.quote(pk[0])
            highest = conn.execute(sa.text(f"SELECT max({quoted_col}) FROM {quoted_table}")).scalar()
            current = int(highest or 0)
            if postgres:
                sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                                        {"t": table, "c": pk[0]}).scalar()
                if sequence:
                    row = conn.execute(sa.text(
                        "SELECT s.last_value, s.max_value FROM pg_sequences s "
                        "WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass = "
                        "CAST(:seq AS regclass)"), {"seq": sequence}).first()
                    if row is not None:
                        current = max(current, int(row.last_value or 0))
                        limit = min(limit, int(row.max_value))
            found.append(KeyUsage(table, pk[0], current, limit))
    return found


def check_keys(engine: Engine, settings: MonitorSettings, host: str | None = None) -> KeysReport:
    host = host or socket.gethostname()
    report = KeysReport()
    usages = key_usage(engine)
    with Session(engine) as db:
        for usage in usages:
            pct = usage.percent
            level = (2 if pct >= settings.key_critical_percent
                     else 1 if pct >= settings.key_high_percent else 0)
            name = f"{usage.table}.{usage.column}"
            threshold = settings.key_critical_percent if level == 2 else settings.key_high_percent
            _, raised = track_level(
                db, f"pk:{name}", level, type_name=NOTIFICATION,
                subject=f"Primary key {name} at {pct:.1f} % of its maximum",
                body=(f"The primary key {name} of pamflow's store reached {usage.current:,} of "
                      f"{usage.maximum:,} ({pct:.1f} %, over {threshold:g} %): widen the "
                      f"column (bigint) before it runs out."),
                action="monitor.primary_key.near_max", entity="primary_key", entity_id=name,
                detail={"host": host, "table": usage.table, "column": usage.column,
                        "current": usage.current, "maximum": usage.maximum, "percent": pct,
                        "level": level})
            report.keys.append(KeyUsage(usage.table, usage.column, usage.current, usage.maximum,
                                        level, NOTIFICATION if raised else None))
        db.commit()
    return report
