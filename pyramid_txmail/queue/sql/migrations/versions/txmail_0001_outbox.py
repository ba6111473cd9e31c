"""The outbox tables: txmail_outbox and txmail_outbox_chunk.

Revision ID: txmail_0001
Revises:
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "txmail_0001"
down_revision = None
branch_labels = ("txmail",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _partial(name, columns, where):
    op.create_index(name, "txmail_outbox", columns, postgresql_where=sa.text(where),
                    sqlite_where=sa.text(where))


def upgrade():
    op.create_table(
        "txmail_outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(998), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("queued_at", sa.Double(), nullable=False),
        sa.Column("next_attempt", sa.Double(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("eightbit", sa.Boolean(), nullable=False),
        sa.Column("head_8bit", sa.Boolean(), nullable=False),
        sa.Column("wire_ready", sa.Boolean(), nullable=False),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("settled_at", sa.Double(), nullable=True),
        sa.CheckConstraint("state IN ('queued', 'in_progress', 'deferred', 'failed', "
                           "'delivered')", name="ck_txmail_outbox_state"),
        sqlite_autoincrement=True,
    )
    _partial("ix_txmail_outbox_queued", ["queued_at", "id"], "state = 'queued'")
    _partial("ix_txmail_outbox_deferred", ["next_attempt"], "state = 'deferred'")
    _partial("ix_txmail_outbox_leases", ["lease_until"], "state = 'in_progress'")
    _partial("ix_txmail_outbox_settled", ["state", "settled_at"],
             "state IN ('failed', 'delivered')")
    op.create_index("ix_txmail_outbox_message_id", "txmail_outbox", ["message_id"])
    op.create_table(
        "txmail_outbox_chunk",
        sa.Column("outbox_id", _ID, sa.ForeignKey("txmail_outbox.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade():
    op.drop_table("txmail_outbox_chunk")
    op.drop_table("txmail_outbox")
