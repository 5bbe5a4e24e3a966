"""Per-field verdicts and item revisions: a verdict per field of a review, the revision of
an item (regenerated fields re-queue it as the next one) and of each review.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# Plain ALTER TABLE ADD / DROP COLUMN (SQLite 3.35+ has both): a batch "move and copy" of
# items would trip the foreign keys of claims and reviews on SQLite.


def upgrade() -> None:
    op.add_column("items", sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
    op.add_column(
        "items",
        sa.Column("regenerations_json", sa.Text(), nullable=False, server_default="{}"),
    )
    op.add_column(
        "reviews", sa.Column("revision", sa.Integer(), nullable=False, server_default="1")
    )
    op.create_table(
        "field_verdicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(1100), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("machine_text", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_field_verdicts"),
        sa.ForeignKeyConstraint(
            ["review_id"], ["reviews.id"], name="fk_field_verdicts_review_id_reviews"
        ),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_field_verdicts_item_id_items"),
    )
    op.create_index("ix_field_verdicts_item", "field_verdicts", ["item_id"])
    op.create_index("ix_field_verdicts_review", "field_verdicts", ["review_id"])


def downgrade() -> None:
    op.drop_index("ix_field_verdicts_review", table_name="field_verdicts")
    op.drop_index("ix_field_verdicts_item", table_name="field_verdicts")
    op.drop_table("field_verdicts")
    op.drop_column("reviews", "revision")
    op.drop_column("items", "regenerations_json")
    op.drop_column("items", "revision")
