"""workflows: workflows, tokens, their events, schedules and due work (issue 14)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 18:25:44

The same tables on both engines; SQLite keeps the cascades with ``foreign_keys`` on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("schedule_id", sa.String(length=63), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("runs_started", sa.Integer(), server_default="0", nullable=False),
        sa.Column("recent_sessions", JSON, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint(
            "tenant_id", "request_id", name=op.f("uq_schedules_tenant_id_request_id")
        ),
        sa.UniqueConstraint(
            "tenant_id", "schedule_id", name=op.f("uq_schedules_tenant_id_schedule_id")
        ),
    )
    op.create_table(
        "workflows",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=63), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("places", JSON, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("last_event_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint(
            "tenant_id", "request_id", name=op.f("uq_workflows_tenant_id_request_id")
        ),
        sa.UniqueConstraint(
            "tenant_id", "workflow_id", name=op.f("uq_workflows_tenant_id_workflow_id")
        ),
    )
    op.create_table(
        "schedule_runs",
        sa.Column("schedule_pk", sa.BigInteger(), nullable=False),
        sa.Column("run_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=63), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule_pk"],
            ["schedules.id"],
            name=op.f("fk_schedule_runs_schedule_pk_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("schedule_pk", "run_number", name=op.f("pk_schedule_runs")),
    )
    op.create_table(
        "workflow_events",
        sa.Column("workflow_pk", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("token_id", sa.String(length=63), server_default="", nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_pk"],
            ["workflows.id"],
            name=op.f("fk_workflow_events_workflow_pk_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workflow_pk", "seq", name=op.f("pk_workflow_events")),
    )
    op.create_index(
        op.f("ix_workflow_events_workflow_pk_token_id_seq"),
        "workflow_events",
        ["workflow_pk", "token_id", "seq"],
        unique=False,
    )

    op.create_table(
        "workflow_tokens",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("workflow_pk", sa.BigInteger(), nullable=False),
        sa.Column("token_id", sa.String(length=63), nullable=False),
        sa.Column("place", sa.String(length=63), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("history", sa.LargeBinary(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_pk"],
            ["workflows.id"],
            name=op.f("fk_workflow_tokens_workflow_pk_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_tokens")),
        sa.UniqueConstraint(
            "workflow_pk", "request_id", name=op.f("uq_workflow_tokens_workflow_pk_request_id")
        ),
        sa.UniqueConstraint(
            "workflow_pk", "token_id", name=op.f("uq_workflow_tokens_workflow_pk_token_id")
        ),
    )
    op.create_index(
        op.f("ix_workflow_tokens_workflow_pk_place_id"),
        "workflow_tokens",
        ["workflow_pk", "place", "id"],
        unique=False,
    )

    op.create_table(
        "due_work",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("due_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claim_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_epoch", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("token_pk", sa.BigInteger(), nullable=True),
        sa.Column("schedule_pk", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["schedule_pk"],
            ["schedules.id"],
            name=op.f("fk_due_work_schedule_pk_schedules"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["token_pk"],
            ["workflow_tokens.id"],
            name=op.f("fk_due_work_token_pk_workflow_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_due_work")),
    )
    op.create_index(op.f("ix_due_work_due_time_id"), "due_work", ["due_time", "id"], unique=False)
    op.create_index(op.f("ix_due_work_schedule_pk"), "due_work", ["schedule_pk"], unique=False)
    op.create_index(op.f("ix_due_work_token_pk"), "due_work", ["token_pk"], unique=False)

    op.create_table(
        "fire_outcomes",
        sa.Column("token_pk", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("fired", sa.Boolean(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_pk"],
            ["workflow_tokens.id"],
            name=op.f("fk_fire_outcomes_token_pk_workflow_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_pk", "request_id", name=op.f("pk_fire_outcomes")),
    )


def downgrade() -> None:
    op.drop_table("fire_outcomes")

    op.drop_table("due_work")

    op.drop_table("workflow_tokens")

    op.drop_table("workflow_events")
    op.drop_table("schedule_runs")
    op.drop_table("workflows")
    op.drop_table("schedules")
