"""Initial review store: runs, items, users, claims, reviews, tokens, sessions, audit.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_key", sa.String(200), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("artifacts_root", sa.Text(), nullable=False),
        sa.Column("policy_json", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("ingested_at", nullable=True),
        sa.PrimaryKeyConstraint("run_key", name="pk_runs"),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_key", sa.String(200), nullable=False),
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("conditions", sa.String(200), nullable=False),
        sa.Column("record_json", sa.Text(), nullable=False),
        sa.Column("record_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("hold_reason", sa.String(200), nullable=True),
        sa.Column("reviews_required", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("queue_seq", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("decided_at", nullable=True),
        sa.Column("final_edits_json", sa.Text(), nullable=False),
        sa.Column("final_reason", sa.String(100), nullable=True),
        sa.Column("final_note", sa.Text(), nullable=True),
        sa.Column("final_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.ForeignKeyConstraint(["run_key"], ["runs.run_key"], name="fk_items_run_key_runs"),
        sa.UniqueConstraint("run_key", "clip_id", name="uq_items_run_key_clip_id"),
    )
    op.create_index("ix_items_queue", "items", ["run_key", "state", "queue_seq"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("claimed_at"),
        _ts("expires_at"),
        _ts("closed_at", nullable=True),
        sa.Column("version_seen", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_claims"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_claims_item_id_items"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_claims_user_id_users"),
    )
    op.create_index("ix_claims_item_status", "claims", ["item_id", "status"])
    op.create_index("ix_claims_user_status", "claims", ["user_id", "status"])
    op.create_index("ix_claims_status_expires", "claims", ["status", "expires_at"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("edits_json", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("version_seen", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_reviews_item_id_items"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_reviews_user_id_users"),
        sa.ForeignKeyConstraint(["claim_id"], ["claims.id"], name="fk_reviews_claim_id_claims"),
    )
    op.create_index("ix_reviews_item", "reviews", ["item_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        _ts("created_at"),
        _ts("last_used_at", nullable=True),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_tokens_user_id_users"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id_sha256", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        sa.PrimaryKeyConstraint("id_sha256", name="pk_web_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_web_sessions_user_id_users"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("run_key", sa.String(200), nullable=True),
        sa.Column("item_id", sa.Integer(), nullable=True),
        sa.Column("clip_id", sa.String(64), nullable=True),
        sa.Column("before_json", sa.Text(), nullable=True),
        sa.Column("after_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_item", "audit", ["item_id"])
    _append_only_audit()


def _append_only_audit() -> None:
    """The audit trail refuses UPDATE and DELETE in the database itself, not just in our code."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
                "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_truncate ON audit")
        op.execute("DROP TRIGGER IF EXISTS audit_append_only ON audit")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    for table in (
        "audit",
        "web_sessions",
        "api_tokens",
        "reviews",
        "claims",
        "users",
        "items",
        "runs",
    ):
        op.drop_table(table)
