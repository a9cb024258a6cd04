"""alerts and configuration audit: deployment snapshots, configuration changes, certificate
alerts, report marks; certificates read from devices' TLS ports

Revision ID: 0006c
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0006c"
down_revision = "0005n"
branch_labels = None
depends_on = None

UTC = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "deployment_snapshot",
        sa.Column("deployment_id", sa.String(), nullable=False),
        sa.Column("robot", sa.String(), nullable=False),
        sa.Column("flow_name", sa.String(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("seen_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id"),
    )
    op.create_index("ix_deployment_snapshot_robot", "deployment_snapshot", ["robot"])
    op.create_table(
        "config_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTC(), nullable=False),
        sa.Column("detected_at", UTC(), nullable=False),
        sa.Column("robot", sa.String(), nullable=False),
        sa.Column("flow_name", sa.String(), nullable=True),
        sa.Column("deployment_id", sa.String(), nullable=False),
        sa.Column("field", sa.String(), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("who", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("syslog_state", sa.String(), nullable=False),
        sa.Column("syslog_attempts", sa.Integer(), nullable=False),
        sa.Column("syslog_error", sa.Text(), nullable=True),
        sa.Column("syslog_sent_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_config_change_at", "config_change", ["at"])
    op.create_index("ix_config_change_robot", "config_change", ["robot"])
    op.create_index("ix_config_change_deployment_id", "config_change", ["deployment_id"])
    op.create_index("ix_config_change_syslog_state", "config_change", ["syslog_state"])
    with op.batch_alter_table("certificate", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(), nullable=False,
                                      server_default="default"))
        batch_op.add_column(sa.Column("source", sa.String(), nullable=False,
                                      server_default="store"))
        batch_op.add_column(sa.Column("port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("fingerprint", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("self_signed", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("last_seen_at", UTC(), nullable=True))
        batch_op.create_unique_constraint("uq_certificate_served_port",
                                          ["source", "device_id", "port"])
    op.create_table(
        "certificate_alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("threshold_days", sa.Integer(), nullable=False),
        sa.Column("not_after", UTC(), nullable=False),
        sa.Column("days_left", sa.Integer(), nullable=False),
        sa.Column("sent_at", UTC(), nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificate.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("certificate_id", "threshold_days", "not_after",
                            name="uq_certificate_alert"),
    )
    op.create_index("ix_certificate_alert_certificate_id", "certificate_alert", ["certificate_id"])
    op.create_table(
        "report_mark",
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("period", sa.String(), nullable=False),
        sa.Column("sent_at", UTC(), nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("kind", "period"),
    )


def downgrade() -> None:
    op.drop_table("report_mark")
    op.drop_index("ix_certificate_alert_certificate_id", table_name="certificate_alert")
    op.drop_table("certificate_alert")
    with op.batch_alter_table("certificate", schema=None) as batch_op:
        batch_op.drop_constraint("uq_certificate_served_port", type_="unique")
        for name in ("last_seen_at", "self_signed", "fingerprint", "port", "source", "tenant"):
            batch_op.drop_column(name)
    for name in ("syslog_state", "deployment_id", "robot", "at"):
        op.drop_index(f"ix_config_change_{name}", table_name="config_change")
    op.drop_table("config_change")
    op.drop_index("ix_deployment_snapshot_robot", table_name="deployment_snapshot")
    op.drop_table("deployment_snapshot")
