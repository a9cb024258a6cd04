"""purge and retention: tenants, archive batches, audit seals and their key; user lock fields

Revision ID: 0009p
Revises: 0003
"""
import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0009p"
down_revision = "0008c"
branch_labels = None
depends_on = None

_TS = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "tenant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", _TS(), nullable=False),
        sa.Column("deleted_at", _TS(), nullable=True),
        sa.Column("deleted_by", sa.String(), nullable=True),
        sa.Column("cleaned_at", _TS(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "archive_batch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=63), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("control_date", _TS(), nullable=False),
        sa.Column("first_id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("child_rows", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("seal_number", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("created_at", _TS(), nullable=False),
        sa.Column("expired_at", _TS(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path"),
    )
    op.create_index("ix_archive_batch_dataset_tenant", "archive_batch", ["dataset", "tenant"])
    op.create_index("ix_archive_batch_state", "archive_batch", ["state"])
    op.create_index("ix_archive_batch_created_at", "archive_batch", ["created_at"])
    op.create_table(
        "audit_seal_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", _TS(), nullable=False),
        sa.Column("retired_at", _TS(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_id"),
    )
    op.create_table(
        "audit_seal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("at", _TS(), nullable=False),
        sa.Column("after_id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(), nullable=False),
        sa.Column("prev_digest", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("signature", sa.String(), nullable=False),
        sa.Column("archived_at", _TS(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("number"),
    )
    with op.batch_alter_table("pam_user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locked_until", _TS(), nullable=True))
        batch_op.add_column(sa.Column("locked_reason", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("lock_warned_at", _TS(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pam_user", schema=None) as batch_op:
        batch_op.drop_column("lock_warned_at")
        batch_op.drop_column("locked_reason")
        batch_op.drop_column("locked_until")
    op.drop_table("audit_seal")
    op.drop_table("audit_seal_key")
    op.drop_index("ix_archive_batch_created_at", table_name="archive_batch")
    op.drop_index("ix_archive_batch_state", table_name="archive_batch")
    op.drop_index("ix_archive_batch_dataset_tenant", table_name="archive_batch")
    op.drop_table("archive_batch")
    op.drop_table("tenant")
