"""Migration 0007d: the directory columns and table on SQLite and PostgreSQL match the
models, and existing rows get their defaults."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from pamflow import db
from pamflow.models import AccessGroup, DirectorySyncState, User


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_directory_schema_matches_models(backend, request):
    from alembic.autogenerate import compare_metadata

    engine = request.getfixturevalue(backend)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    mine = {"pam_user", "access_group", "directory_sync_state"}
    ours = [d for d in diff if any(t in repr(d) for t in mine)]
    assert ours == []
    with db.session(engine) as s:
        s.add(User(username="u1"))
        s.add(AccessGroup(name="g1", rules={}))
        s.add(DirectorySyncState(key="corp:users", mark="20260101000000Z", last_result={}))
        s.commit()
        user = s.get(User, 1)
        assert user is not None and user.tenant == "default" and user.granted == {}
        group = s.get(AccessGroup, 1)
        assert group is not None and group.active and group.source == "local"


def test_downgrade_and_upgrade_again(tmp_path):
    from alembic import command

    engine = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pam_user (username, source, status, created_at) "
                             "VALUES ('old', 'local', 'active', CURRENT_TIMESTAMP)"))
        command.downgrade(db._alembic_config(conn), "0007d-1")
    assert "directory_sync_state" not in sa.inspect(engine).get_table_names()
    db.migrate(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT tenant, granted FROM pam_user")).one()
    assert row[0] == "default" and row[1] in ("{}", {})
    engine.dispose()
