"""tool servers: backends implementing ToolService, registered per tenant

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tool_servers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("tool_server_id", sa.String(length=63), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_servers")),
        sa.UniqueConstraint(
            "tenant_id", "tool_server_id", name=op.f("uq_tool_servers_tenant_id_tool_server_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("tool_servers")
