"""cloud device import: source account, tags, instance state and removal time on devices

Revision ID: 0008c
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0008c"
down_revision = "0007d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_account", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("instance_state", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("removed_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
    # a unique index, not a constraint: SQLite would otherwise rebuild the device table,
    # which the credentials' foreign keys forbid
    op.create_index("uq_device_source_external", "device",
                    ["tenant", "source", "source_account", "external_id"], unique=True)
    op.create_table(
        "vault_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_vault_entry_name"),
    )


def downgrade() -> None:
    op.drop_table("vault_entry")
    op.drop_index("uq_device_source_external", table_name="device")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("removed_at")
        batch_op.drop_column("instance_state")
        batch_op.drop_column("tags")
        batch_op.drop_column("source_account")
