"""The schema (SQLAlchemy Core): every table of the memory service, every row scoped by tenant.

Columns hold what is filtered, ordered, joined or updated in place; the rest of a resource's
contract-shaped content is kept as its serialized protobuf message in a ``document`` column,
so the stored form round-trips exactly. Times are UTC. The migrations in
``agentmesh_memory/migrations`` create exactly this schema (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

__all__ = [
    "JSON_VALUE",
    "METADATA",
    "SEARCH_INDEX_OBJECTS",
    "UtcDateTime",
    "agent_memory",
    "agents",
    "api_keys",
    "approvals",
    "chunks",
    "collections",
    "documents",
    "events",
    "executions",
    "include_in_schema_comparison",
    "message_recipients",
    "messages",
    "request_log",
    "sessions",
    "tasks",
    "tool_servers",
    "user_settings",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

METADATA = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime on both engines (SQLite stores it naive, PostgreSQL as timestamptz)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Surrogate keys: BIGINT on PostgreSQL, INTEGER on SQLite (its rowid alias autoincrements).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_VALUE: sa.types.TypeEngine[Any] = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TENANT = 128  # longest tenant id


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(TENANT), nullable=False)


agents = sa.Table(
    "agents",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("agent_id", sa.String(63), nullable=False),
    sa.Column("type", sa.SmallInteger, nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # AgentDefinition
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("update_time", UtcDateTime, nullable=False),
    # The retention rules of its memory policy, for the sweeper: [{type, max_entries,
    # max_age_seconds}]; NULL when it has none.
    sa.Column("memory_retention", JSON_VALUE, nullable=True),
    sa.UniqueConstraint("tenant_id", "agent_id"),
    sa.Index(None, "tenant_id", "type", "agent_id"),
)

sessions = sa.Table(
    "sessions",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("session_id", sa.String(63), nullable=False),
    sa.Column("parent_id", sa.String(63), nullable=True),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("strategy", sa.SmallInteger, nullable=False),
    sa.Column("goal", sa.Text, nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # Session, minus the column fields
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expire_time", UtcDateTime, nullable=True),
    sa.Column("lease_epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_event_seq", sa.BigInteger, nullable=False, server_default="0"),
    # Seq of the terminal event once appended; nothing may be appended after it.
    sa.Column("terminal_seq", sa.BigInteger, nullable=True),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("update_time", UtcDateTime, nullable=False),
    sa.Column("start_time", UtcDateTime, nullable=True),
    sa.Column("end_time", UtcDateTime, nullable=True),
    sa.UniqueConstraint("tenant_id", "session_id"),
    sa.Index(None, "tenant_id", "status", "id"),
    sa.Index(None, "tenant_id", "parent_id", "id"),
)

messages = sa.Table(
    "messages",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column(
        "session_pk",
        sa.BigInteger,
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("message_id", sa.String(63), nullable=False),
    sa.Column("role", sa.SmallInteger, nullable=False),
    sa.Column("agent", sa.String(255), nullable=False, server_default=""),
    sa.Column("task_id", sa.String(63), nullable=False, server_default=""),
    sa.Column("round", sa.Integer, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("document", sa.LargeBinary, nullable=False),  # Message (content, tool calls)
    sa.Column("create_time", UtcDateTime, nullable=False),
    # Addressed messages (send_message): their MessageType, and whether they have recipients
    # (in message_recipients); the shared conversation is the messages without.
    sa.Column("type", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("addressed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("session_pk", "message_id"),
    sa.Index(None, "session_pk", "id"),
)

message_recipients = sa.Table(
    "message_recipients",
    METADATA,
    sa.Column(
        "message_pk",
        sa.BigInteger,
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("recipient", sa.String(255), primary_key=True),
    sa.Column("session_pk", sa.BigInteger, nullable=False),
    _tenant(),
    sa.Index(None, "session_pk", "recipient", "message_pk"),
)

tasks = sa.Table(
    "tasks",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column(
        "session_pk",
        sa.BigInteger,
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("task_id", sa.String(63), nullable=False),
    sa.Column("parent_task_id", sa.String(63), nullable=False, server_default=""),
    sa.Column("agent", sa.String(255), nullable=False, server_default=""),
    sa.Column("agent_type", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("depends_on", JSON_VALUE, nullable=False),  # list of task ids
    sa.Column("document", sa.LargeBinary, nullable=False),  # Task (description, input, ...)
    sa.Column("output", sa.Text, nullable=False, server_default=""),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("start_time", UtcDateTime, nullable=True),
    sa.Column("end_time", UtcDateTime, nullable=True),
    sa.UniqueConstraint("session_pk", "task_id"),
    sa.Index(None, "session_pk", "status", "id"),
)

events = sa.Table(
    "events",
    METADATA,
    sa.Column(
        "session_pk",
        sa.BigInteger,
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    _tenant(),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # SessionEvent
    sa.Column("create_time", UtcDateTime, nullable=False),
)

executions = sa.Table(
    "executions",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("execution_id", sa.String(63), nullable=False),
    sa.Column("session_id", sa.String(63), nullable=True),
    sa.Column("agent", sa.String(255), nullable=False, server_default=""),
    sa.Column("task_id", sa.String(63), nullable=False, server_default=""),
    sa.Column("route", sa.String(255), nullable=False, server_default=""),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("model", sa.String(255), nullable=False, server_default=""),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("latency_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("time_to_first_token_us", sa.BigInteger, nullable=True),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cached_prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cost_micros_usd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("outcome", sa.SmallInteger, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("document", sa.LargeBinary, nullable=False),  # Execution (error, response)
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("call_index", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("tenant_id", "execution_id"),
    sa.UniqueConstraint("tenant_id", "idempotency_key"),
    sa.Index(None, "tenant_id", "session_id", "id"),
    sa.Index(None, "tenant_id", "create_time"),
    sa.Index(None, "tenant_id", "agent", "create_time"),
)

agent_memory = sa.Table(
    "agent_memory",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("agent_id", sa.String(63), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("key", sa.String(256), nullable=False),
    sa.Column("type", sa.SmallInteger, nullable=False),
    sa.Column("value", JSON_VALUE, nullable=False),
    sa.Column("expire_time", UtcDateTime, nullable=True),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("update_time", UtcDateTime, nullable=False),
    sa.Column("access_time", UtcDateTime, nullable=True),
    sa.Column("access_count", sa.BigInteger, nullable=False, server_default="0"),
    # Size of the value as JSON, for memory statistics.
    sa.Column("value_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("tenant_id", "agent_id", "user_id", "key"),
    sa.Index(None, "expire_time"),
)

user_settings = sa.Table(
    "user_settings",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # UserSettings
    sa.Column("update_time", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "user_id"),
)

api_keys = sa.Table(
    "api_keys",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("key_id", sa.String(63), nullable=False),
    sa.Column("display_name", sa.String(255), nullable=False, server_default=""),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # sha256 hex of the secret
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("last_used_time", UtcDateTime, nullable=True),
    sa.UniqueConstraint("tenant_id", "key_id"),
    sa.UniqueConstraint("secret_hash"),
)

tool_servers = sa.Table(
    "tool_servers",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("tool_server_id", sa.String(63), nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # ToolServerRecord
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "tool_server_id"),
)

collections = sa.Table(
    "collections",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("collection_id", sa.String(63), nullable=False),
    sa.Column("display_name", sa.String(255), nullable=False, server_default=""),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("update_time", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "collection_id"),
)

documents = sa.Table(
    "documents",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column(
        "collection_pk",
        sa.BigInteger,
        sa.ForeignKey("collections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("document_id", sa.String(63), nullable=False),
    sa.Column("display_name", sa.String(255), nullable=False, server_default=""),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    sa.Column("format", sa.SmallInteger, nullable=False),
    sa.Column("metadata", JSON_VALUE, nullable=False),  # {key: value} strings
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("text_chars", sa.BigInteger, nullable=False),
    sa.Column("chunk_count", sa.Integer, nullable=False),
    sa.Column("page_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.UniqueConstraint("collection_pk", "document_id"),
    sa.Index(None, "tenant_id", "document_id"),
)

# A document's passages. The full-text index over `content` is the database's own and lives
# outside this metadata (see SEARCH_INDEX_OBJECTS): an FTS5 table kept by triggers on SQLite,
# a generated tsvector column with a GIN index on PostgreSQL (migration 0004).
chunks = sa.Table(
    "chunks",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("collection_pk", sa.BigInteger, nullable=False),
    sa.Column(
        "document_pk",
        sa.BigInteger,
        sa.ForeignKey("documents.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("chunk_index", sa.Integer, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Column("page", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("document_pk", "chunk_index"),
)

#: Full-text search objects the migrations create per engine and this metadata leaves out:
#: SQLite FTS5 tables (with their shadow tables) and triggers, PostgreSQL tsvector columns and
#: GIN indexes. Schema comparisons (autogenerate, the schema test) skip them.
SEARCH_INDEX_OBJECTS = frozenset(
    {
        "chunks_fts",
        "agent_memory_fts",
        "search_vector",
        "ix_chunks_search_vector",
        "ix_agent_memory_search",
    }
)


def include_in_schema_comparison(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's ``include_object``: leave the engine-specific search index objects alone."""
    if not reflected or compare_to is not None or name is None:
        return True
    return not any(name == n or name.startswith(f"{n}_") for n in SEARCH_INDEX_OBJECTS)


# Idempotency: the response of a mutating call, by (tenant, method, request_id).
request_log = sa.Table(
    "request_log",
    METADATA,
    sa.Column("tenant_id", sa.String(TENANT), primary_key=True),
    sa.Column("method", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Index(None, "create_time"),
)

approvals = sa.Table(
    "approvals",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column(
        "session_pk",
        sa.BigInteger,
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("approval_id", sa.String(63), nullable=False),
    sa.Column("state", sa.SmallInteger, nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # Approval (call, comment, ...)
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("expire_time", UtcDateTime, nullable=True),
    sa.Column("resolve_time", UtcDateTime, nullable=True),
    sa.UniqueConstraint("session_pk", "approval_id"),
    sa.Index(None, "session_pk", "state", "id"),
)

# The workflow tables live in their own module on the same METADATA.
from . import workflow_tables  # noqa: E402, F401
