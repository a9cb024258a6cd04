"""Migration 0006c: the schema matches the models on SQLite and PostgreSQL, and it
downgrades and upgrades cleanly."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from pamflow import db

OURS = ("certificate", "certificate_alert", "config_change", "deployment_snapshot",
        "report_mark")


def _our_diffs(engine) -> list:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    return [d for d in diffs if any(t in str(d) for t in OURS)]


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_0006c_matches_the_models_and_round_trips(backend, request):
    engine = request.getfixturevalue(backend)
    assert _our_diffs(engine) == []
    with engine.begin() as conn:
        command.downgrade(db._alembic_config(conn), "0003")
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "head")
    assert _our_diffs(engine) == []
