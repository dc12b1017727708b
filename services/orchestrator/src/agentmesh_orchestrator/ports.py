"""What the orchestration logic needs from the outside world, as protocols.

Adapters implement them over gRPC (the memory service, the inference gateway, tool servers);
tests implement them in memory. Values crossing these ports are the contract's own protobuf
messages (`agentmesh.common.v1`, `agentmesh.memory.v1`, `agentmesh.inference.v1`): they are
typed, already validated at the edge, and what the adapters send on anyway. Every method takes
the tenant explicitly; nothing here reads ambient state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from agentmesh.common.v1 import approvals_pb2, events_pb2, generation_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh.memory.v1 import memory_pb2


@dataclass(frozen=True)
class StepWrite:
    """What one commit stores, in one transaction (in this order): ledger rows, messages, the
    session's named fields, pending approvals, then events."""

    events: Sequence[events_pb2.SessionEvent] = ()
    messages: Sequence[memory_pb2.StoredMessage] = ()
    executions: Sequence[memory_pb2.Execution] = ()
    update: sessions_pb2.Session | None = None
    update_fields: Sequence[str] = ()
    approvals: Sequence[approvals_pb2.Approval] = ()


@dataclass(frozen=True)
class StepStored:
    """The seq range a commit's events got (both 0 when it had none)."""

    first_seq: int
    last_seq: int


class SessionStore(Protocol):
    """Durable session state (the memory service)."""

    async def commit_step(
        self, tenant: str, session: str, step: StepWrite, *, lease_owner: str = ""
    ) -> StepStored:
        """Store `step` atomically (all of it or nothing). With `lease_owner`, refuse it with
        FailedPrecondition (reason LEASE_LOST) unless that owner holds the session's lease."""
        ...

    async def recent_messages(
        self, tenant: str, session: str, newest: int
    ) -> list[memory_pb2.StoredMessage]:
        """The newest messages of the conversation, oldest first."""
        ...

    async def create_tasks(
        self, tenant: str, session: str, tasks: Sequence[sessions_pb2.Task]
    ) -> list[sessions_pb2.Task]:
        """Store a plan's tasks."""
        ...

    async def update_task(
        self, tenant: str, task: sessions_pb2.Task, fields: Sequence[str]
    ) -> sessions_pb2.Task:
        """Change the named fields of a task."""
        ...

    async def find_execution(
        self, tenant: str, idempotency_key: str
    ) -> memory_pb2.Execution | None:
        """A recorded call with this idempotency key, if any."""
        ...

    async def get_approval(self, tenant: str, name: str) -> approvals_pb2.Approval | None:
        """The approval `sessions/{s}/approvals/{a}`, or None when there is none."""
        ...

    async def resolve_approval(
        self,
        tenant: str,
        name: str,
        state: approvals_pb2.ApprovalState.ValueType,
        comment: str,
        request_id: str = "",
    ) -> approvals_pb2.Approval:
        """Answer a PENDING approval (appending its approval_resolved event); raise
        FailedPrecondition (reason APPROVAL_RESOLVED) when it was answered already."""
        ...

    def watch_events(
        self, tenant: str, session: str, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """The session's stored events after `after_seq`, then the live ones as they come."""
        ...


class ModelGateway(Protocol):
    """Streaming model calls (the inference gateway)."""

    def generate(
        self, tenant: str, request: inference_pb2.GenerateRequest
    ) -> AsyncIterator[generation_pb2.GenerateEvent]:
        """Stream one generation's events; cancelling the iteration cancels the call."""
        ...
