"""duty: when each service duty is next due and what it last did

Revision ID: 0004o
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0004o"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        "duty",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("next_due_at", when(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("last_started_at", when(), nullable=True),
        sa.Column("last_finished_at", when(), nullable=True),
        sa.Column("last_found", sa.Integer(), nullable=False),
        sa.Column("last_work_at", when(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("duty")
