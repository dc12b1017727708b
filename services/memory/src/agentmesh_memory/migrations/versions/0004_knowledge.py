"""knowledge: collections, documents and their full-text index; memory search, statistics and
retention; addressed messages; turn counting in the ledger

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-05 12:00:00

Chained after 0002 (main's head when issue 15 began). Issue 18 adds 0003 (approvals) after
0002 as well: whichever merges second re-points its ``down_revision`` to the other's revision.

The full-text indexes are each engine's own and are not in ``tables.METADATA``
(see ``SEARCH_INDEX_OBJECTS``):

* SQLite: FTS5 tables (``porter unicode61`` tokenizer, bm25 ranking) with external content,
  kept in step by triggers, so an insert or a (cascading) delete of a row updates the index
  in the same transaction.
* PostgreSQL: a stored generated ``tsvector`` column (``english`` configuration) with a GIN
  index on passages; an expression GIN index over memory keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

#: The memory search expression (PostgreSQL): keys read as words, values as JSON text.
MEMORY_TSVECTOR = "to_tsvector('english'::regconfig, replace(key, '_', ' ') || ' ' || value::text)"

SQLITE_FTS = [
    # Passages.
    "CREATE VIRTUAL TABLE chunks_fts USING fts5(content, content='chunks', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN "
    "INSERT INTO chunks_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, content) VALUES ('delete', old.id, old.content); "
    "END",
    # Agent memory: keys and values (JSON text); reads (access counts) do not touch the index.
    "CREATE VIRTUAL TABLE agent_memory_fts USING fts5(key, value, content='agent_memory', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER agent_memory_fts_insert AFTER INSERT ON agent_memory BEGIN "
    "INSERT INTO agent_memory_fts(rowid, key, value) VALUES (new.id, new.key, new.value); END",
    "CREATE TRIGGER agent_memory_fts_delete AFTER DELETE ON agent_memory BEGIN "
    "INSERT INTO agent_memory_fts(agent_memory_fts, rowid, key, value) "
    "VALUES ('delete', old.id, old.key, old.value); END",
    "CREATE TRIGGER agent_memory_fts_update AFTER UPDATE OF key, value ON agent_memory BEGIN "
    "INSERT INTO agent_memory_fts(agent_memory_fts, rowid, key, value) "
    "VALUES ('delete', old.id, old.key, old.value); "
    "INSERT INTO agent_memory_fts(rowid, key, value) VALUES (new.id, new.key, new.value); END",
    # Entries stored before this migration.
    "INSERT INTO agent_memory_fts(agent_memory_fts) VALUES ('rebuild')",
]

POSTGRES_FTS = [
    "ALTER TABLE chunks ADD COLUMN search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED",
    "CREATE INDEX ix_chunks_search_vector ON chunks USING gin (search_vector)",
    f"CREATE INDEX ix_agent_memory_search ON agent_memory USING gin (({MEMORY_TSVECTOR}))",
]


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("collection_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=255), server_default="", nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint(
            "tenant_id", "collection_id", name=op.f("uq_collections_tenant_id_collection_id")
        ),
    )
    op.create_table(
        "documents",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("collection_pk", sa.BigInteger(), nullable=False),
        sa.Column("document_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=255), server_default="", nullable=False),
        sa.Column("title", sa.Text(), server_default="", nullable=False),
        sa.Column("format", sa.SmallInteger(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("text_chars", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("page_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_pk"],
            ["collections.id"],
            name=op.f("fk_documents_collection_pk_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.UniqueConstraint(
            "collection_pk", "document_id", name=op.f("uq_documents_collection_pk_document_id")
        ),
    )
    op.create_index(
        op.f("ix_documents_tenant_id_document_id"), "documents", ["tenant_id", "document_id"]
    )
    op.create_table(
        "chunks",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("collection_pk", sa.BigInteger(), nullable=False),
        sa.Column("document_pk", sa.BigInteger(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("start_offset", sa.BigInteger(), nullable=False),
        sa.Column("end_offset", sa.BigInteger(), nullable=False),
        sa.Column("page", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["document_pk"],
            ["documents.id"],
            name=op.f("fk_chunks_document_pk_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunks")),
        sa.UniqueConstraint(
            "document_pk", "chunk_index", name=op.f("uq_chunks_document_pk_chunk_index")
        ),
    )
    op.create_table(
        "message_recipients",
        sa.Column("message_pk", sa.BigInteger(), nullable=False),
        sa.Column("recipient", sa.String(length=255), nullable=False),
        sa.Column("session_pk", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_pk"],
            ["messages.id"],
            name=op.f("fk_message_recipients_message_pk_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_pk", "recipient", name=op.f("pk_message_recipients")),
    )
    op.create_index(
        op.f("ix_message_recipients_session_pk_recipient_message_pk"),
        "message_recipients",
        ["session_pk", "recipient", "message_pk"],
    )
    op.add_column(
        "messages", sa.Column("type", sa.SmallInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "messages", sa.Column("addressed", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("agents", sa.Column("memory_retention", JSON, nullable=True))
    op.add_column(
        "executions", sa.Column("call_index", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_index(
        op.f("ix_executions_tenant_id_agent_create_time"),
        "executions",
        ["tenant_id", "agent", "create_time"],
    )
    op.add_column(
        "agent_memory",
        sa.Column("value_bytes", sa.BigInteger(), server_default="0", nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("UPDATE agent_memory SET value_bytes = octet_length(value::text)")
        for statement in POSTGRES_FTS:
            op.execute(statement)
    else:
        op.execute("UPDATE agent_memory SET value_bytes = length(CAST(value AS BLOB))")
        for statement in SQLITE_FTS:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_agent_memory_search")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS agent_memory_fts_{name}")
        for name in ("insert", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS chunks_fts_{name}")
        op.execute("DROP TABLE IF EXISTS agent_memory_fts")
        op.execute("DROP TABLE IF EXISTS chunks_fts")
    with op.batch_alter_table("agent_memory") as batch:
        batch.drop_column("value_bytes")
    op.drop_index(op.f("ix_executions_tenant_id_agent_create_time"), table_name="executions")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("call_index")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("memory_retention")
    op.drop_index(
        op.f("ix_message_recipients_session_pk_recipient_message_pk"),
        table_name="message_recipients",
    )
    op.drop_table("message_recipients")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("addressed")
        batch.drop_column("type")
    op.drop_table("chunks")
    op.drop_index(op.f("ix_documents_tenant_id_document_id"), table_name="documents")
    op.drop_table("documents")
    op.drop_table("collections")
