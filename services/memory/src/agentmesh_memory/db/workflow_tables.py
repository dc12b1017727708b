"""The workflow part of the schema: workflows, tokens, their events, schedules and due work.

Defined on the same :data:`~agentmesh_memory.db.tables.METADATA` as the other tables (which
imports this module), so migrations and the schema comparison cover them.

Deleting a workflow cascades to its tokens and events, a token's deletion to its due work and
its remembered fire outcomes, a schedule's to its due work and runs (on SQLite too: the
connection turns ``foreign_keys`` on).
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import JSON_VALUE, METADATA, TENANT, BigId, UtcDateTime

__all__ = [
    "due_work",
    "fire_outcomes",
    "schedule_runs",
    "schedules",
    "workflow_events",
    "workflow_tokens",
    "workflows",
]

REQUEST_ID = 128


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(TENANT), nullable=False)


workflows = sa.Table(
    "workflows",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("workflow_id", sa.String(63), nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # Workflow, minus the column fields
    # The ids of its places (a list): a token may only sit in one of them.
    sa.Column("places", JSON_VALUE, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("last_event_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("update_time", UtcDateTime, nullable=False),
    sa.Column("request_id", sa.String(REQUEST_ID), nullable=True),
    sa.UniqueConstraint("tenant_id", "workflow_id"),
    sa.UniqueConstraint("tenant_id", "request_id"),
)

workflow_tokens = sa.Table(
    "workflow_tokens",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),  # creation order
    _tenant(),
    sa.Column(
        "workflow_pk",
        sa.BigInteger,
        sa.ForeignKey("workflows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("token_id", sa.String(63), nullable=False),
    sa.Column("place", sa.String(63), nullable=False),
    sa.Column("data", JSON_VALUE, nullable=False),  # a JSON object
    sa.Column("metadata", JSON_VALUE, nullable=False),  # a JSON object
    sa.Column("history", sa.LargeBinary, nullable=False),  # Token with only `history` set
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("update_time", UtcDateTime, nullable=False),
    sa.Column("request_id", sa.String(REQUEST_ID), nullable=True),
    sa.UniqueConstraint("workflow_pk", "token_id"),
    sa.UniqueConstraint("workflow_pk", "request_id"),
    sa.Index(None, "workflow_pk", "place", "id"),
)

workflow_events = sa.Table(
    "workflow_events",
    METADATA,
    sa.Column(
        "workflow_pk",
        sa.BigInteger,
        sa.ForeignKey("workflows.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    _tenant(),
    sa.Column("token_id", sa.String(63), nullable=False, server_default=""),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # WorkflowEvent
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Index(None, "workflow_pk", "token_id", "seq"),
)

# The outcome of a FireTransition call (CommitToken with fire_request_id), so a retry of the
# call answers it again instead of firing twice.
fire_outcomes = sa.Table(
    "fire_outcomes",
    METADATA,
    sa.Column(
        "token_pk",
        sa.BigInteger,
        sa.ForeignKey("workflow_tokens.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("request_id", sa.String(REQUEST_ID), primary_key=True),
    _tenant(),
    sa.Column("fired", sa.Boolean, nullable=False),
    sa.Column("event_seq", sa.BigInteger, nullable=False),
    sa.Column("create_time", UtcDateTime, nullable=False),
)

schedules = sa.Table(
    "schedules",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("schedule_id", sa.String(63), nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # Schedule, minus the column fields
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("runs_started", sa.Integer, nullable=False, server_default="0"),
    sa.Column("recent_sessions", JSON_VALUE, nullable=False),  # names, newest first
    sa.Column("create_time", UtcDateTime, nullable=False),
    sa.Column("request_id", sa.String(REQUEST_ID), nullable=True),
    sa.UniqueConstraint("tenant_id", "schedule_id"),
    sa.UniqueConstraint("tenant_id", "request_id"),
)

# Every run a schedule started, with its session: the runs whose session has not ended are the
# schedule's active runs (joined with sessions.status).
schedule_runs = sa.Table(
    "schedule_runs",
    METADATA,
    sa.Column(
        "schedule_pk",
        sa.BigInteger,
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("run_number", sa.Integer, primary_key=True, autoincrement=False),
    _tenant(),
    sa.Column("session_id", sa.String(63), nullable=False),
    sa.Column("create_time", UtcDateTime, nullable=False),
)

# Work due at a time, claimed by one orchestrator replica at a time (claimed_by until
# claim_expires; claim_epoch fences a completion by a replica whose claim was taken over).
due_work = sa.Table(
    "due_work",
    METADATA,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant(),
    sa.Column("kind", sa.String(16), nullable=False),  # place_agent | schedule
    sa.Column("document", sa.LargeBinary, nullable=False),  # DueWork with only its kind set
    sa.Column("due_time", UtcDateTime, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("claim_expires", UtcDateTime, nullable=True),
    sa.Column("claim_epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column(
        "token_pk",
        sa.BigInteger,
        sa.ForeignKey("workflow_tokens.id", ondelete="CASCADE"),
        nullable=True,
    ),
    sa.Column(
        "schedule_pk",
        sa.BigInteger,
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        nullable=True,
    ),
    sa.Index(None, "due_time", "id"),
    sa.Index(None, "token_pk"),
    sa.Index(None, "schedule_pk"),
)
