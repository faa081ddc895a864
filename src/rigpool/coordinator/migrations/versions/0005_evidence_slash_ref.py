"""evidence.slash_ref: which ledger slash a record was counted in

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 02:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slash_ref", sa.String(length=80), nullable=True))
        batch_op.create_index(batch_op.f("ix_evidence_slash_ref"), ["slash_ref"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evidence_slash_ref"))
        batch_op.drop_column("slash_ref")
