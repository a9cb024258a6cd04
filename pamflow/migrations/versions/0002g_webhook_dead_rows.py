"""webhook outbox: dead rows (refused by Prefect, or failing past the limit)

Revision ID: 0002g
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel  # noqa: F401


revision = '0002g'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failures', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('dead_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('webhook_delivery', schema=None) as batch_op:
        batch_op.drop_column('dead_at')
        batch_op.drop_column('failures')
