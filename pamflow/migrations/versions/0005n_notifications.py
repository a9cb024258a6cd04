"""notifications: tenant, severity, HTML and repeat counting on notification rows; messages
(the unit of delivery), routes, channel secrets and mailed one-time codes

Revision ID: 0005n
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0005n"
down_revision = "0004o"
branch_labels = None
depends_on = None

UTC = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(255), nullable=False,
                                      server_default="default"))
        batch_op.add_column(sa.Column("severity", sa.String(), nullable=False,
                                      server_default="info"))
        batch_op.add_column(sa.Column("html", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("dedup_key", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("repeats", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_seen_at", UTC(), nullable=True))
        batch_op.add_column(sa.Column("routed_at", UTC(), nullable=True))
        batch_op.create_index("ix_notification_dedup", ["tenant", "type", "dedup_key"], unique=False)

    op.create_table(
        "notification_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("severity", sa.String(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("notification_ids", sa.JSON(), nullable=False),
        sa.Column("secret_ref", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC(), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_until", UTC(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("sent_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    with op.batch_alter_table("notification_message", schema=None) as batch_op:
        batch_op.create_index("ix_notification_message_state", ["state"], unique=False)
        batch_op.create_index("ix_notification_message_due", ["state", "next_attempt_at"],
                              unique=False)

    op.create_table(
        "notification_route",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("match", sa.String(255), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("min_severity", sa.String(), nullable=False),
        sa.Column("secret_ref", sa.String(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "match", "recipient", "channel", name="uq_notification_route"),
    )
    op.create_table(
        "mfa_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("expires_at", UTC(), nullable=False),
        sa.Column("used_at", UTC(), nullable=True),
        sa.Column("revoked_at", UTC(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mfa_token", schema=None) as batch_op:
        batch_op.create_index("ix_mfa_token_username", ["username"], unique=False)
    op.create_table(
        "notification_secret",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("notification_secret")
    with op.batch_alter_table("mfa_token", schema=None) as batch_op:
        batch_op.drop_index("ix_mfa_token_username")
    op.drop_table("mfa_token")
    op.drop_table("notification_route")
    with op.batch_alter_table("notification_message", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_message_due")
        batch_op.drop_index("ix_notification_message_state")
    op.drop_table("notification_message")
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_dedup")
        for column in ("routed_at", "last_seen_at", "repeats", "dedup_key", "html", "severity",
                       "tenant"):
            batch_op.drop_column(column)
