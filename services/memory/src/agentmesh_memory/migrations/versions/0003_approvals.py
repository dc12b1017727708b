"""approvals: tool calls waiting for a human's approval, per session

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("session_pk", sa.BigInteger(), nullable=False),
        sa.Column("approval_id", sa.String(length=63), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolve_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_pk"],
            ["sessions.id"],
            name=op.f("fk_approvals_session_pk_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint(
            "session_pk", "approval_id", name=op.f("uq_approvals_session_pk_approval_id")
        ),
    )
    op.create_index(
        op.f("ix_approvals_session_pk_state_id"),
        "approvals",
        ["session_pk", "state", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_approvals_session_pk_state_id"), table_name="approvals")
    op.drop_table("approvals")
