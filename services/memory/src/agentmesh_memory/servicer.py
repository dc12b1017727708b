"""gRPC servicer of the memory service: reads the tenant, converts, delegates to the stores.

Every method is one line of delegation: validation, rules and SQL live in
:mod:`agentmesh_memory.store`; domain errors become statuses in the shared error interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

import grpc

from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh.memory.v1 import memory_pb2 as pb
from agentmesh.memory.v1 import memory_pb2_grpc
from agentmesh_common import tenant_from_context

from .names import invalid
from .store import Stores
from .store.knowledge import read_upload

Context = grpc.aio.ServicerContext[Any, Any]

MAX_TENANT = 128
T = TypeVar("T")


async def _complete(work: Coroutine[Any, Any, T]) -> T:
    """Run one store call to its end even if the RPC is cancelled meanwhile.

    A cancelled client or an expired deadline then never interrupts a transaction half-way
    (the database connection is returned cleanly; statement_timeout bounds the work).
    """
    return await asyncio.shield(asyncio.ensure_future(work))


def tenant_of(context: Context) -> str:
    """The caller's tenant (``x-agentmesh-tenant``); UNAUTHENTICATED when missing."""
    tenant = tenant_from_context(context)
    if len(tenant) > MAX_TENANT:
        raise invalid("x-agentmesh-tenant", f"at most {MAX_TENANT} characters")
    return tenant


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """`agentmesh.memory.v1.MemoryService`."""

    def __init__(self, stores: Stores) -> None:
        self._s = stores

    # Agents
    async def CreateAgent(
        self, request: pb.CreateAgentRequest, context: Context
    ) -> pb.CreateAgentResponse:
        return await _complete(self._s.agents.create(tenant_of(context), request))

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        return await _complete(self._s.agents.get(tenant_of(context), request))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        return await _complete(self._s.agents.list(tenant_of(context), request))

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, context: Context
    ) -> pb.UpdateAgentResponse:
        return await _complete(self._s.agents.update(tenant_of(context), request))

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, context: Context
    ) -> pb.DeleteAgentResponse:
        return await _complete(self._s.agents.delete(tenant_of(context), request))

    # Sessions
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        return await _complete(self._s.sessions.create(tenant_of(context), request))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        return await _complete(self._s.sessions.get(tenant_of(context), request))

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        return await _complete(self._s.sessions.list(tenant_of(context), request))

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.UpdateSessionResponse:
        return await _complete(self._s.sessions.update(tenant_of(context), request))

    # Messages
    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: Context
    ) -> pb.AppendMessagesResponse:
        return await _complete(self._s.messages.append(tenant_of(context), request))

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        return await _complete(self._s.messages.list(tenant_of(context), request))

    # Tasks
    async def BatchCreateTasks(
        self, request: pb.BatchCreateTasksRequest, context: Context
    ) -> pb.BatchCreateTasksResponse:
        return await _complete(self._s.tasks.batch_create(tenant_of(context), request))

    async def UpdateTask(
        self, request: pb.UpdateTaskRequest, context: Context
    ) -> pb.UpdateTaskResponse:
        return await _complete(self._s.tasks.update(tenant_of(context), request))

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        return await _complete(self._s.tasks.list(tenant_of(context), request))

    # Event log
    async def AppendEvents(
        self, request: pb.AppendEventsRequest, context: Context
    ) -> pb.AppendEventsResponse:
        return await _complete(self._s.events.append(tenant_of(context), request))

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        async with aclosing(self._s.events.watch(tenant_of(context), request)) as responses:
            async for response in responses:
                yield response

    async def CommitStep(
        self, request: pb.CommitStepRequest, context: Context
    ) -> pb.CommitStepResponse:
        return await _complete(self._s.steps.commit(tenant_of(context), request))

    # Usage ledger
    async def RecordExecution(
        self, request: pb.RecordExecutionRequest, context: Context
    ) -> pb.RecordExecutionResponse:
        return await _complete(self._s.ledger.record(tenant_of(context), request))

    async def BatchRecordExecutions(
        self, request: pb.BatchRecordExecutionsRequest, context: Context
    ) -> pb.BatchRecordExecutionsResponse:
        return await _complete(self._s.ledger.record_many(tenant_of(context), request))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Context
    ) -> pb.ListExecutionsResponse:
        return await _complete(self._s.ledger.list(tenant_of(context), request))

    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.GetUsageResponse:
        return await _complete(self._s.ledger.usage(tenant_of(context), request))

    # Agent memory
    async def PutMemory(
        self, request: pb.PutMemoryRequest, context: Context
    ) -> pb.PutMemoryResponse:
        return await _complete(self._s.memories.put(tenant_of(context), request))

    async def GetMemory(
        self, request: pb.GetMemoryRequest, context: Context
    ) -> pb.GetMemoryResponse:
        return await _complete(self._s.memories.get(tenant_of(context), request))

    async def ListMemories(
        self, request: pb.ListMemoriesRequest, context: Context
    ) -> pb.ListMemoriesResponse:
        return await _complete(self._s.memories.list(tenant_of(context), request))

    async def DeleteMemory(
        self, request: pb.DeleteMemoryRequest, context: Context
    ) -> pb.DeleteMemoryResponse:
        return await _complete(self._s.memories.delete(tenant_of(context), request))

    async def SearchMemories(
        self, request: kpb.SearchMemoriesRequest, context: Context
    ) -> kpb.SearchMemoriesResponse:
        return await _complete(self._s.insights.search(tenant_of(context), request))

    async def GetMemoryStats(
        self, request: kpb.GetMemoryStatsRequest, context: Context
    ) -> kpb.GetMemoryStatsResponse:
        return await _complete(self._s.insights.stats(tenant_of(context), request))

    async def GetAgentStats(
        self, request: kpb.GetAgentStatsRequest, context: Context
    ) -> kpb.GetAgentStatsResponse:
        return await _complete(self._s.agent_stats.stats(tenant_of(context), request))

    # Collections and documents
    async def CreateCollection(
        self, request: kpb.CreateCollectionRequest, context: Context
    ) -> kpb.CreateCollectionResponse:
        return await _complete(self._s.knowledge.create_collection(tenant_of(context), request))

    async def GetCollection(
        self, request: kpb.GetCollectionRequest, context: Context
    ) -> kpb.GetCollectionResponse:
        return await _complete(self._s.knowledge.get_collection(tenant_of(context), request))

    async def ListCollections(
        self, request: kpb.ListCollectionsRequest, context: Context
    ) -> kpb.ListCollectionsResponse:
        return await _complete(self._s.knowledge.list_collections(tenant_of(context), request))

    async def DeleteCollection(
        self, request: kpb.DeleteCollectionRequest, context: Context
    ) -> kpb.DeleteCollectionResponse:
        return await _complete(self._s.knowledge.delete_collection(tenant_of(context), request))

    async def UploadDocument(
        self, request_iterator: AsyncIterator[kpb.UploadDocumentRequest], context: Context
    ) -> kpb.UploadDocumentResponse:
        tenant = tenant_of(context)
        knowledge = self._s.knowledge
        # Reading stops early at the size limit; storing then runs to its end (shielded).
        header, data = await read_upload(request_iterator, knowledge.max_document_bytes)
        return await _complete(knowledge.ingest(tenant, header, data))

    async def GetDocument(
        self, request: kpb.GetDocumentRequest, context: Context
    ) -> kpb.GetDocumentResponse:
        return await _complete(self._s.knowledge.get_document(tenant_of(context), request))

    async def ListDocuments(
        self, request: kpb.ListDocumentsRequest, context: Context
    ) -> kpb.ListDocumentsResponse:
        return await _complete(self._s.knowledge.list_documents(tenant_of(context), request))

    async def DeleteDocument(
        self, request: kpb.DeleteDocumentRequest, context: Context
    ) -> kpb.DeleteDocumentResponse:
        return await _complete(self._s.knowledge.delete_document(tenant_of(context), request))

    async def SearchDocuments(
        self, request: kpb.SearchDocumentsRequest, context: Context
    ) -> kpb.SearchDocumentsResponse:
        return await _complete(self._s.search.search(tenant_of(context), request))

    # User settings
    async def GetUserSettings(
        self, request: pb.GetUserSettingsRequest, context: Context
    ) -> pb.GetUserSettingsResponse:
        return await _complete(self._s.settings.get(tenant_of(context), request))

    async def UpdateUserSettings(
        self, request: pb.UpdateUserSettingsRequest, context: Context
    ) -> pb.UpdateUserSettingsResponse:
        return await _complete(self._s.settings.update(tenant_of(context), request))

    # API keys
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        return await _complete(self._s.api_keys.create(tenant_of(context), request))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        return await _complete(self._s.api_keys.list(tenant_of(context), request))

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: Context
    ) -> pb.DeleteApiKeyResponse:
        return await _complete(self._s.api_keys.delete(tenant_of(context), request))

    async def WatchApiKeys(
        self, request: pb.WatchApiKeysRequest, context: Context
    ) -> AsyncIterator[pb.WatchApiKeysResponse]:
        async with aclosing(self._s.api_keys.watch()) as responses:
            async for response in responses:
                yield response

    async def AuthenticateApiKey(
        self, request: pb.AuthenticateApiKeyRequest, context: Context
    ) -> pb.AuthenticateApiKeyResponse:
        return await _complete(self._s.api_keys.authenticate(request))

    # Leases
    async def AcquireLease(
        self, request: pb.AcquireLeaseRequest, context: Context
    ) -> pb.AcquireLeaseResponse:
        return await _complete(self._s.sessions.acquire_lease(tenant_of(context), request))

    async def RenewLease(
        self, request: pb.RenewLeaseRequest, context: Context
    ) -> pb.RenewLeaseResponse:
        return await _complete(self._s.sessions.renew_lease(tenant_of(context), request))

    async def ReleaseLease(
        self, request: pb.ReleaseLeaseRequest, context: Context
    ) -> pb.ReleaseLeaseResponse:
        return await _complete(self._s.sessions.release_lease(tenant_of(context), request))

    # Tool servers
    async def CreateToolServer(
        self, request: pb.CreateToolServerRequest, context: Context
    ) -> pb.CreateToolServerResponse:
        return await _complete(self._s.tool_servers.create(tenant_of(context), request))

    async def GetToolServer(
        self, request: pb.GetToolServerRequest, context: Context
    ) -> pb.GetToolServerResponse:
        return await _complete(self._s.tool_servers.get(tenant_of(context), request))

    async def ListToolServers(
        self, request: pb.ListToolServersRequest, context: Context
    ) -> pb.ListToolServersResponse:
        return await _complete(self._s.tool_servers.list(tenant_of(context), request))

    async def DeleteToolServer(
        self, request: pb.DeleteToolServerRequest, context: Context
    ) -> pb.DeleteToolServerResponse:
        return await _complete(self._s.tool_servers.delete(tenant_of(context), request))

    # Approvals
    async def GetApproval(
        self, request: pb.GetApprovalRequest, context: Context
    ) -> pb.GetApprovalResponse:
        return await _complete(self._s.approvals.get(tenant_of(context), request))

    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: Context
    ) -> pb.ListApprovalsResponse:
        return await _complete(self._s.approvals.list(tenant_of(context), request))

    async def ResolveApproval(
        self, request: pb.ResolveApprovalRequest, context: Context
    ) -> pb.ResolveApprovalResponse:
        return await _complete(self._s.approvals.resolve(tenant_of(context), request))

    async def ListOrphanedSessions(
        self, request: pb.ListOrphanedSessionsRequest, context: Context
    ) -> pb.ListOrphanedSessionsResponse:
        return await _complete(self._s.sessions.list_orphaned(request))
