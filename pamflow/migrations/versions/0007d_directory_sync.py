"""directory sync: users and access groups from LDAP/AD, the incremental marks

Revision ID: 0007d
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0007d"
down_revision = "0006c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pam_user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=255), nullable=False,
                                      server_default="default"))
        batch_op.add_column(sa.Column("directory", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("dn", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("synced_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("disabled_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column("granted", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("granted_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.create_index("ix_pam_user_directory", ["directory"], unique=False)
        batch_op.create_index("ix_pam_user_external_id", ["external_id"], unique=False)
    with op.batch_alter_table("access_group", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(), nullable=False,
                                      server_default="local"))
        batch_op.add_column(sa.Column("directory", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("external_id", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("dn", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("tenant", sa.String(length=255), nullable=False,
                                      server_default="default"))
        batch_op.add_column(sa.Column("active", sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column("synced_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
        batch_op.create_index("ix_access_group_directory", ["directory"], unique=False)
        batch_op.create_index("ix_access_group_external_id", ["external_id"], unique=False)
    op.create_table(
        "directory_sync_state",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("mark", sa.String(), nullable=True),
        sa.Column("last_run_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_full_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_result", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("directory_sync_state")
    with op.batch_alter_table("access_group", schema=None) as batch_op:
        batch_op.drop_index("ix_access_group_external_id")
        batch_op.drop_index("ix_access_group_directory")
        for name in ("synced_at", "active", "tenant", "dn", "external_id", "directory", "source"):
            batch_op.drop_column(name)
    with op.batch_alter_table("pam_user", schema=None) as batch_op:
        batch_op.drop_index("ix_pam_user_external_id")
        batch_op.drop_index("ix_pam_user_directory")
        for name in ("granted_at", "granted", "disabled_at", "synced_at", "dn", "directory",
                     "tenant"):
            batch_op.drop_column(name)
