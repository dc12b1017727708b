"""The memory service as the orchestrator's `SessionStore`, plus the resource calls the public
API passes through (agents, sessions, memory, settings, usage, API keys, leases).

Every call carries the tenant in `x-agentmesh-tenant` metadata and a deadline; failures come
back as the shared domain errors (`from_rpc_error`), so the orchestrator's servicer answers
a NOT_FOUND from memory as NOT_FOUND, not as an internal error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import field_mask_pb2

from agentmesh.common.v1 import (
    agents_pb2,
    approvals_pb2,
    events_pb2,
    knowledge_pb2,
    memory_entries_pb2,
    sessions_pb2,
    user_settings_pb2,
)
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc, workflows_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY, NotFound, from_rpc_error
from agentmesh_common.protobuf import duration
from agentmesh_orchestrator.ports import StepStored, StepWrite

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0


class MemoryClient:
    """Typed calls to `agentmesh.memory.v1.MemoryService` on one channel."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stub = memory_pb2_grpc.MemoryServiceStub(channel)
        self.workflows = workflows_pb2_grpc.WorkflowStoreServiceStub(channel)
        self._timeout = timeout

    async def call(
        self,
        tenant: str,
        method: Callable[..., Awaitable[T]],
        request: object,
        *,
        deadline_seconds: float | None = None,
    ) -> T:
        """Invoke a unary (or client-streaming) method for `tenant`; map failures to domain
        errors. `deadline_seconds` overrides the client's deadline."""
        try:
            return await method(
                request,
                metadata=((TENANT_METADATA_KEY, tenant),),
                timeout=deadline_seconds or self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    # -- SessionStore ------------------------------------------------------------------------

    async def commit_step(
        self, tenant: str, session: str, step: StepWrite, *, lease_owner: str = ""
    ) -> StepStored:
        request = memory_pb2.CommitStepRequest(
            session=session,
            lease_owner=lease_owner,
            executions=step.executions,
            messages=step.messages,
            events=step.events,
            approvals=step.approvals,
        )
        if step.update is not None and step.update_fields:
            request.update.CopyFrom(step.update)
            request.update_mask.paths.extend(step.update_fields)
        reply = await self.call(tenant, self.stub.CommitStep, request)
        return StepStored(first_seq=reply.first_seq, last_seq=reply.last_seq)

    async def append_events(
        self, tenant: str, session: str, events: Sequence[events_pb2.SessionEvent]
    ) -> int:
        reply = await self.call(
            tenant,
            self.stub.AppendEvents,
            memory_pb2.AppendEventsRequest(session=session, events=events),
        )
        return reply.last_seq

    async def append_messages(
        self,
        tenant: str,
        session: str,
        messages: Sequence[memory_pb2.StoredMessage],
        request_id: str = "",
    ) -> None:
        await self.call(
            tenant,
            self.stub.AppendMessages,
            memory_pb2.AppendMessagesRequest(
                parent=session, messages=messages, request_id=request_id
            ),
        )

    async def recent_messages(
        self, tenant: str, session: str, newest: int
    ) -> list[memory_pb2.StoredMessage]:
        reply = await self.call(
            tenant,
            self.stub.ListMessages,
            memory_pb2.ListMessagesRequest(parent=session, newest=newest),
        )
        return list(reply.messages)

    async def update_session(
        self, tenant: str, session: sessions_pb2.Session, fields: Sequence[str]
    ) -> sessions_pb2.Session:
        reply = await self.call(
            tenant,
            self.stub.UpdateSession,
            memory_pb2.UpdateSessionRequest(
                session=session, update_mask=field_mask_pb2.FieldMask(paths=sorted(set(fields)))
            ),
        )
        return reply.session

    async def create_tasks(
        self, tenant: str, session: str, tasks: Sequence[sessions_pb2.Task]
    ) -> list[sessions_pb2.Task]:
        reply = await self.call(
            tenant,
            self.stub.BatchCreateTasks,
            memory_pb2.BatchCreateTasksRequest(parent=session, tasks=tasks),
        )
        return list(reply.tasks)

    async def update_task(
        self, tenant: str, task: sessions_pb2.Task, fields: Sequence[str]
    ) -> sessions_pb2.Task:
        reply = await self.call(
            tenant,
            self.stub.UpdateTask,
            memory_pb2.UpdateTaskRequest(
                task=task, update_mask=field_mask_pb2.FieldMask(paths=sorted(set(fields)))
            ),
        )
        return reply.task

    async def find_execution(
        self, tenant: str, idempotency_key: str
    ) -> memory_pb2.Execution | None:
        reply = await self.call(
            tenant,
            self.stub.ListExecutions,
            memory_pb2.ListExecutionsRequest(idempotency_key=idempotency_key, page_size=1),
        )
        return reply.executions[0] if reply.executions else None

    async def get_approval(self, tenant: str, name: str) -> approvals_pb2.Approval | None:
        try:
            reply = await self.call(
                tenant, self.stub.GetApproval, memory_pb2.GetApprovalRequest(name=name)
            )
        except NotFound:
            return None
        return reply.approval

    async def resolve_approval(
        self,
        tenant: str,
        name: str,
        state: approvals_pb2.ApprovalState.ValueType,
        comment: str,
        request_id: str = "",
    ) -> approvals_pb2.Approval:
        reply = await self.call(
            tenant,
            self.stub.ResolveApproval,
            memory_pb2.ResolveApprovalRequest(
                name=name, state=state, comment=comment, request_id=request_id
            ),
        )
        return reply.approval

    async def pending_approvals(self, tenant: str, session: str) -> list[approvals_pb2.Approval]:
        """The session's approvals still waiting for an answer, oldest first."""
        reply = await self.call(
            tenant,
            self.stub.ListApprovals,
            memory_pb2.ListApprovalsRequest(
                parent=session, state=approvals_pb2.APPROVAL_STATE_PENDING, page_size=1000
            ),
        )
        return list(reply.approvals)

    # -- agent memory (for the memory tools) -------------------------------------------------

    async def get_memory(self, tenant: str, name: str) -> memory_entries_pb2.MemoryEntry | None:
        try:
            reply = await self.call(
                tenant, self.stub.GetMemory, memory_pb2.GetMemoryRequest(name=name)
            )
        except NotFound as missing:
            if missing.reason == "MEMORY_NOT_FOUND":
                return None
            raise  # the agent itself does not exist: memory needs a stored agent
        return reply.entry

    async def put_memory(
        self, tenant: str, entry: memory_entries_pb2.MemoryEntry, ttl_seconds: float | None
    ) -> memory_entries_pb2.MemoryEntry:
        request = memory_pb2.PutMemoryRequest(entry=entry)
        if ttl_seconds is not None:
            request.ttl.CopyFrom(duration(ttl_seconds))
        reply = await self.call(tenant, self.stub.PutMemory, request)
        return reply.entry

    # -- what agents know: settings, memory recall, documents, addressed messages -------------

    async def get_user_settings(self, tenant: str, user: str) -> user_settings_pb2.UserSettings:
        reply = await self.call(
            tenant,
            self.stub.GetUserSettings,
            memory_pb2.GetUserSettingsRequest(name=f"users/{user}/settings"),
        )
        return reply.settings

    async def recall_memories(
        self,
        tenant: str,
        parent: str,
        query: str,
        *,
        types: Sequence[agents_pb2.MemoryType.ValueType],
        limit: int,
    ) -> list[memory_entries_pb2.MemoryEntry]:
        reply = await self.call(
            tenant,
            self.stub.SearchMemories,
            kpb.SearchMemoriesRequest(
                parent=parent,
                query=query[:4000],
                types=types,
                page_size=min(limit, 100),
                fill_with_recent=True,
                record_access=True,
            ),
        )
        return list(reply.entries)

    async def search_passages(
        self,
        tenant: str,
        query: str,
        *,
        collections: Sequence[str],
        documents: Sequence[str],
        limit: int,
    ) -> list[knowledge_pb2.Citation]:
        reply = await self.call(
            tenant,
            self.stub.SearchDocuments,
            kpb.SearchDocumentsRequest(
                parent="collections/-",
                query=query[:1000],
                collections=collections,
                documents=documents,
                mode=knowledge_pb2.SEARCH_MODE_ANY_TERM,
                page_size=limit,
            ),
        )
        return [result.citation for result in reply.results]

    async def addressed_messages(
        self, tenant: str, session: str, participant: str, newest: int
    ) -> list[memory_pb2.StoredMessage]:
        reply = await self.call(
            tenant,
            self.stub.ListMessages,
            memory_pb2.ListMessagesRequest(
                parent=session,
                newest=newest,
                audience=memory_pb2.MESSAGE_AUDIENCE_ADDRESSED,
                participant=participant,
            ),
        )
        return list(reply.messages)

    # -- sessions, events and leases ---------------------------------------------------------

    async def get_session(self, tenant: str, name: str) -> sessions_pb2.Session:
        reply = await self.call(
            tenant, self.stub.GetSession, memory_pb2.GetSessionRequest(name=name)
        )
        return reply.session

    async def watch_events(
        self, tenant: str, session: str, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Replay then tail a session's events; ends after the terminal event."""
        call = self.stub.WatchEvents(
            memory_pb2.WatchEventsRequest(session=session, after_seq=after_seq),
            metadata=((TENANT_METADATA_KEY, tenant),),
        )
        try:
            async for reply in call:
                for event in reply.events:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def list_orphaned(self) -> list[tuple[str, sessions_pb2.Session]]:
        """RUNNING sessions of any tenant whose lease expired, with their tenant."""
        found: list[tuple[str, sessions_pb2.Session]] = []
        token = ""
        while True:
            reply = await self.call(
                "",
                self.stub.ListOrphanedSessions,
                memory_pb2.ListOrphanedSessionsRequest(page_size=100, page_token=token),
            )
            found.extend((item.tenant, item.session) for item in reply.sessions)
            token = reply.next_page_token
            if not token:
                return found

    async def acquire_lease(
        self, tenant: str, session: str, owner: str, ttl_seconds: float
    ) -> memory_pb2.AcquireLeaseResponse:
        return await self.call(
            tenant,
            self.stub.AcquireLease,
            memory_pb2.AcquireLeaseRequest(session=session, owner=owner, ttl=duration(ttl_seconds)),
        )

    async def renew_lease(
        self, tenant: str, session: str, owner: str, ttl_seconds: float
    ) -> memory_pb2.Lease:
        reply = await self.call(
            tenant,
            self.stub.RenewLease,
            memory_pb2.RenewLeaseRequest(session=session, owner=owner, ttl=duration(ttl_seconds)),
        )
        return reply.lease

    async def release_lease(self, tenant: str, session: str, owner: str) -> None:
        await self.call(
            tenant,
            self.stub.ReleaseLease,
            memory_pb2.ReleaseLeaseRequest(session=session, owner=owner),
        )
