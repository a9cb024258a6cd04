"""system monitors: the state each monitor keeps between runs; alarm definitions and alarms;
maintenance windows of devices

Revision ID: 0010m
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0010m"
down_revision = "0009p"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_state",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "alarm_definition",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=300), nullable=False),
        sa.Column("condition", sa.String(length=2), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("severity", sa.String(length=10), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alarm_definition_name", "alarm_definition", ["name"], unique=True)
    op.create_table(
        "alarm",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("definition_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=300), nullable=False),
        sa.Column("severity", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("opened_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("closed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["definition_id"], ["alarm_definition.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alarm_definition_id", "alarm", ["definition_id"])
    op.create_index("ix_alarm_state", "alarm", ["state"])
    op.create_index("ix_alarm_closed_at", "alarm", ["closed_at"])
    op.create_table(
        "maintenance_window",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("ends_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_maintenance_window_device_id", "maintenance_window", ["device_id"])
    op.create_index("ix_maintenance_window_starts_at", "maintenance_window", ["starts_at"])
    op.create_index("ix_maintenance_window_ends_at", "maintenance_window", ["ends_at"])


def downgrade() -> None:
    op.drop_table("maintenance_window")
    op.drop_table("alarm")
    op.drop_table("alarm_definition")
    op.drop_table("monitor_state")
