"""In-memory stand-ins for the orchestrator's ports, for unit tests and benchmarks.

`InMemorySessionStore` keeps what the memory service would, with the same seq rules.
`ScriptedGateway` answers each model call from a function of the request, streaming the
reply in chunks exactly as the gateway's normalized events do. Integration tests use the
real memory service and gateway instead.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf import struct_pb2
from google.rpc import status_pb2

from agentmesh.common.v1 import (
    approvals_pb2,
    events_pb2,
    generation_pb2,
    memory_entries_pb2,
    messages_pb2,
    sessions_pb2,
)
from agentmesh.inference.v1 import inference_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition

from .ports import StepStored, StepWrite


class InMemorySessionStore:
    """A `SessionStore` in a dict, per tenant."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], list[events_pb2.SessionEvent]] = defaultdict(list)
        self.messages: dict[tuple[str, str], list[memory_pb2.StoredMessage]] = defaultdict(list)
        self.sessions: dict[tuple[str, str], sessions_pb2.Session] = {}
        self.tasks: dict[tuple[str, str], sessions_pb2.Task] = {}
        self.executions: dict[tuple[str, str], memory_pb2.Execution] = {}
        self.approvals: dict[tuple[str, str], approvals_pb2.Approval] = {}
        self.request_ids: set[tuple[str, str]] = set()
        self.execution_lookups = 0
        self.commits = 0
        self.appended = asyncio.Condition()

    async def commit_step(
        self, tenant: str, session: str, step: StepWrite, *, lease_owner: str = ""
    ) -> StepStored:
        """Store `step` as the memory service does (leases are not modelled here)."""
        self.commits += 1
        for execution in step.executions:
            stored_execution = memory_pb2.Execution()
            stored_execution.CopyFrom(execution)
            stored_execution.session = stored_execution.session or session
            await self.record_execution(tenant, stored_execution)
        if step.messages:
            await self.append_messages(tenant, session, step.messages)
        if step.update is not None and step.update_fields:
            await self.update_session(tenant, step.update, step.update_fields)
        for approval in step.approvals:
            name = f"{session}/approvals/{approval.approval_id}"
            if (tenant, name) not in self.approvals:  # asked again: the first record stands
                stored_approval = approvals_pb2.Approval()
                stored_approval.CopyFrom(approval)
                stored_approval.name = name
                stored_approval.state = approvals_pb2.APPROVAL_STATE_PENDING
                stored_approval.create_time.GetCurrentTime()
                self.approvals[(tenant, name)] = stored_approval
        if not step.events:
            return StepStored(0, 0)
        last = await self.append_events(tenant, session, step.events)
        return StepStored(last - len(step.events) + 1, last)

    async def append_events(
        self, tenant: str, session: str, events: Sequence[events_pb2.SessionEvent]
    ) -> int:
        log = self.events[(tenant, session)]
        for event in events:
            stored = events_pb2.SessionEvent()
            stored.CopyFrom(event)
            stored.seq = len(log) + 1
            log.append(stored)
        async with self.appended:
            self.appended.notify_all()
        return len(log)

    async def append_messages(
        self,
        tenant: str,
        session: str,
        messages: Sequence[memory_pb2.StoredMessage],
        request_id: str = "",
    ) -> None:
        if request_id:
            if (tenant, request_id) in self.request_ids:
                return
            self.request_ids.add((tenant, request_id))
        self.messages[(tenant, session)].extend(messages)

    async def recent_messages(
        self, tenant: str, session: str, newest: int
    ) -> list[memory_pb2.StoredMessage]:
        return list(self.messages[(tenant, session)][-newest:]) if newest > 0 else []

    async def update_session(
        self, tenant: str, session: sessions_pb2.Session, fields: Sequence[str]
    ) -> sessions_pb2.Session:
        stored = self.sessions.get((tenant, session.name))
        if stored is None:
            stored = sessions_pb2.Session()
            stored.CopyFrom(session)
            self.sessions[(tenant, session.name)] = stored
        for name in fields:
            if name == "status" and session.status != stored.status:
                _stamp_transition(stored, session.status)
            setattr_field(stored, session, name)
        return stored

    async def create_tasks(
        self, tenant: str, session: str, tasks: Sequence[sessions_pb2.Task]
    ) -> list[sessions_pb2.Task]:
        created = []
        for task in tasks:
            stored = sessions_pb2.Task()
            stored.CopyFrom(task)
            stored.name = f"{session}/tasks/{task.task_id}"
            self.tasks[(tenant, stored.name)] = stored
            created.append(stored)
        return created

    async def update_task(
        self, tenant: str, task: sessions_pb2.Task, fields: Sequence[str]
    ) -> sessions_pb2.Task:
        stored = self.tasks[(tenant, task.name)]
        for name in fields:
            if name == "status" and task.status != stored.status:
                _stamp_transition(stored, task.status)
            setattr_field(stored, task, name)
        return stored

    async def record_execution(self, tenant: str, execution: memory_pb2.Execution) -> None:
        key = (tenant, execution.idempotency_key)
        if execution.idempotency_key and key in self.executions:
            return
        self.executions[key] = execution

    async def find_execution(
        self, tenant: str, idempotency_key: str
    ) -> memory_pb2.Execution | None:
        self.execution_lookups += 1
        return self.executions.get((tenant, idempotency_key))

    async def get_approval(self, tenant: str, name: str) -> approvals_pb2.Approval | None:
        stored = self.approvals.get((tenant, name))
        if stored is None:
            return None
        copy = approvals_pb2.Approval()
        copy.CopyFrom(stored)
        return copy

    async def resolve_approval(
        self,
        tenant: str,
        name: str,
        state: approvals_pb2.ApprovalState.ValueType,
        comment: str,
        request_id: str = "",
    ) -> approvals_pb2.Approval:
        """Answer it and append approval_resolved, as the memory service does."""
        stored = self.approvals[(tenant, name)]
        if stored.state != approvals_pb2.APPROVAL_STATE_PENDING:
            raise FailedPrecondition(f"{name} was already answered", reason="APPROVAL_RESOLVED")
        stored.state = state
        stored.comment = comment
        stored.resolve_time.GetCurrentTime()
        resolved = approvals_pb2.Approval()
        resolved.CopyFrom(stored)
        session = name.split("/approvals/")[0]
        event = events_pb2.SessionEvent(
            session=session,
            agent=stored.agent,
            approval_resolved=events_pb2.ApprovalResolved(approval=resolved),
        )
        event.time.GetCurrentTime()
        await self.append_events(tenant, session, [event])
        return resolved

    async def watch_events(
        self, tenant: str, session: str, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Stored events after `after_seq`, then new ones as they are appended."""
        log = self.events[(tenant, session)]
        delivered = after_seq

        def more() -> bool:
            return len(log) > delivered

        while True:
            while delivered < len(log):
                delivered += 1
                yield log[delivered - 1]
            async with self.appended:
                await self.appended.wait_for(more)


_RUNNING = {sessions_pb2.SESSION_STATUS_RUNNING, sessions_pb2.TASK_STATUS_RUNNING}
_ENDED_SESSION = {
    sessions_pb2.SESSION_STATUS_COMPLETED,
    sessions_pb2.SESSION_STATUS_FAILED,
    sessions_pb2.SESSION_STATUS_CANCELLED,
}
_ENDED_TASK = {
    sessions_pb2.TASK_STATUS_COMPLETED,
    sessions_pb2.TASK_STATUS_FAILED,
    sessions_pb2.TASK_STATUS_CANCELLED,
    sessions_pb2.TASK_STATUS_SKIPPED,
}


def _stamp_transition(stored: sessions_pb2.Session | sessions_pb2.Task, status: int) -> None:
    """Set start and end times on status changes, as the memory service does."""
    ended = _ENDED_SESSION if isinstance(stored, sessions_pb2.Session) else _ENDED_TASK
    if status in _RUNNING and not stored.HasField("start_time"):
        stored.start_time.GetCurrentTime()
    if status in ended:
        stored.end_time.GetCurrentTime()


def setattr_field(target: object, source: object, name: str) -> None:
    """Copy one field (scalar, message or repeated) from `source` to `target`."""
    descriptor = target.DESCRIPTOR.fields_by_name[name]  # type: ignore[attr-defined]
    if descriptor.is_repeated:
        target_field = getattr(target, name)
        del target_field[:]
        target_field.extend(getattr(source, name))
    elif descriptor.message_type is not None:
        getattr(target, name).CopyFrom(getattr(source, name))
    else:
        setattr(target, name, getattr(source, name))


@dataclass(frozen=True)
class Reply:
    """What the scripted model answers to one call."""

    text: str = ""
    tool_calls: Sequence[messages_pb2.ToolCall] = ()
    chunks: int = 4
    finish_reason: generation_pb2.FinishReason.ValueType = generation_pb2.FINISH_REASON_STOP
    delay_seconds: float = 0.0
    structured: struct_pb2.Struct | None = None
    error: status_pb2.Status | None = None
    # Tokens the failed attempt used all the same (an answer that missed the schema).
    error_usage: generation_pb2.Usage | None = None
    # Streamed first, then abandoned with a `restart` (as the gateway falls back mid-stream).
    abandoned: str = ""


Script = Callable[[inference_pb2.GenerateRequest], Reply]


@dataclass
class ScriptedGateway:
    """A `ModelGateway` whose answers come from `script`; records every request it got."""

    script: Script
    requests: list[inference_pb2.GenerateRequest] = field(default_factory=list)
    price_micros_per_token: int = 1

    async def generate(
        self, tenant: str, request: inference_pb2.GenerateRequest
    ) -> AsyncIterator[generation_pb2.GenerateEvent]:
        self.requests.append(request)
        reply = self.script(request)
        yield generation_pb2.GenerateEvent(
            attempt_started=generation_pb2.AttemptStarted(
                provider="scripted", model="scripted-1", attempt=1, deployment="scripted"
            )
        )
        if reply.error is not None:
            # What the real gateway streams when every deployment failed.
            yield generation_pb2.GenerateEvent(
                attempt_failed=generation_pb2.AttemptFailed(
                    error=reply.error,
                    retryable=False,
                    will_fall_back=False,
                    attempt=1,
                    usage=reply.error_usage,
                )
            )
            return
        if reply.abandoned:
            for piece in _split(reply.abandoned, reply.chunks):
                yield generation_pb2.GenerateEvent(delta=generation_pb2.Delta(text=piece))
            yield generation_pb2.GenerateEvent(
                restart=generation_pb2.Restart(reason="scripted fallback", next_attempt=2)
            )
        text, finish_reason = reply.text, reply.finish_reason
        limit = request.config.max_tokens
        if limit and len(text) // 4 > limit:
            # As a provider does: the answer stops at max_tokens.
            text, finish_reason = text[: limit * 4], generation_pb2.FINISH_REASON_LENGTH
        pieces = _split(text, reply.chunks)
        for piece in pieces:
            if reply.delay_seconds:
                await asyncio.sleep(reply.delay_seconds / max(len(pieces), 1))
            yield generation_pb2.GenerateEvent(delta=generation_pb2.Delta(text=piece))
        prompt_tokens = sum(len(m.content) // 4 + 4 for m in request.messages)
        completion_tokens = max(len(text) // 4, 1)
        usage = generation_pb2.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            cost_micros_usd=(prompt_tokens + completion_tokens) * self.price_micros_per_token,
        )
        finished = generation_pb2.Finished(
            finish_reason=(
                generation_pb2.FINISH_REASON_TOOL_CALLS if reply.tool_calls else finish_reason
            ),
            usage=usage,
            provider="scripted",
            model="scripted-1",
            tool_calls=reply.tool_calls,
            text=text,
        )
        if reply.structured is not None:
            finished.structured_output.CopyFrom(reply.structured)
        yield generation_pb2.GenerateEvent(finished=finished)


def _split(text: str, chunks: int) -> list[str]:
    if not text:
        return []
    size = max(len(text) // max(chunks, 1), 1)
    return [text[i : i + size] for i in range(0, len(text), size)]


def system_prompt(request: inference_pb2.GenerateRequest) -> str:
    """The system prompt of a request (scripts answer by agent)."""
    for message in request.messages:
        if message.role == messages_pb2.ROLE_SYSTEM:
            return message.content
    return ""


def last_user_content(request: inference_pb2.GenerateRequest) -> str:
    """The last user message of a request."""
    for message in reversed(request.messages):
        if message.role == messages_pb2.ROLE_USER:
            return message.content
    return ""


class InMemoryMemoryTools:
    """A `MemoryToolStore` in a dict (no expiry)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], memory_entries_pb2.MemoryEntry] = {}

    async def get_memory(self, tenant: str, name: str) -> memory_entries_pb2.MemoryEntry | None:
        return self.entries.get((tenant, name))

    async def put_memory(
        self, tenant: str, entry: memory_entries_pb2.MemoryEntry, ttl_seconds: float | None
    ) -> memory_entries_pb2.MemoryEntry:
        self.entries[(tenant, entry.name)] = entry
        return entry
