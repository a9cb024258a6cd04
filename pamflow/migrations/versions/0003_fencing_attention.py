"""lease fencing token on operations; attention flag on credentials

Revision ID: 0003
Revises: 0002g
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0003"
down_revision = "0002g"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_epoch", sa.Integer(), nullable=False,
                                      server_default="0"))
    with op.batch_alter_table("credential", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attention", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("attention_at", sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credential", schema=None) as batch_op:
        batch_op.drop_column("attention_at")
        batch_op.drop_column("attention")
    with op.batch_alter_table("operation", schema=None) as batch_op:
        batch_op.drop_column("lease_epoch")
