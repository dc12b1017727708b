"""gRPC servicer of ``agentmesh.memory.v1.WorkflowStoreService``: tenant, convert, delegate.

Claims of due work (ClaimDueWork, CompleteDueWork, RenewDueWork, ReleaseDueWork) serve every
tenant: the items carry their tenant. Every other method is scoped to the caller's tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from agentmesh.memory.v1 import workflows_pb2 as pb
from agentmesh.memory.v1 import workflows_pb2_grpc

from .servicer import Context, _complete, tenant_of
from .store import WorkflowStores


class WorkflowStoreServicer(workflows_pb2_grpc.WorkflowStoreServiceServicer):
    """`agentmesh.memory.v1.WorkflowStoreService`."""

    def __init__(self, stores: WorkflowStores) -> None:
        self._s = stores

    # Workflows
    async def CreateWorkflowRecord(
        self, request: pb.CreateWorkflowRecordRequest, context: Context
    ) -> pb.CreateWorkflowRecordResponse:
        return await _complete(self._s.workflows.create(tenant_of(context), request))

    async def GetWorkflowRecord(
        self, request: pb.GetWorkflowRecordRequest, context: Context
    ) -> pb.GetWorkflowRecordResponse:
        return await _complete(self._s.workflows.get(tenant_of(context), request))

    async def ListWorkflowRecords(
        self, request: pb.ListWorkflowRecordsRequest, context: Context
    ) -> pb.ListWorkflowRecordsResponse:
        return await _complete(self._s.workflows.list(tenant_of(context), request))

    async def UpdateWorkflowRecord(
        self, request: pb.UpdateWorkflowRecordRequest, context: Context
    ) -> pb.UpdateWorkflowRecordResponse:
        return await _complete(self._s.workflows.update(tenant_of(context), request))

    async def DeleteWorkflowRecord(
        self, request: pb.DeleteWorkflowRecordRequest, context: Context
    ) -> pb.DeleteWorkflowRecordResponse:
        return await _complete(self._s.workflows.delete(tenant_of(context), request))

    # Tokens and events
    async def CreateTokenRecord(
        self, request: pb.CreateTokenRecordRequest, context: Context
    ) -> pb.CreateTokenRecordResponse:
        return await _complete(self._s.tokens.create(tenant_of(context), request))

    async def GetTokenRecord(
        self, request: pb.GetTokenRecordRequest, context: Context
    ) -> pb.GetTokenRecordResponse:
        return await _complete(self._s.tokens.get(tenant_of(context), request))

    async def ListTokenRecords(
        self, request: pb.ListTokenRecordsRequest, context: Context
    ) -> pb.ListTokenRecordsResponse:
        return await _complete(self._s.tokens.list(tenant_of(context), request))

    async def CommitToken(
        self, request: pb.CommitTokenRequest, context: Context
    ) -> pb.CommitTokenResponse:
        return await _complete(self._s.tokens.commit(tenant_of(context), request))

    async def AppendWorkflowEvents(
        self, request: pb.AppendWorkflowEventsRequest, context: Context
    ) -> pb.AppendWorkflowEventsResponse:
        return await _complete(self._s.events.append(tenant_of(context), request))

    async def WatchWorkflowEvents(
        self, request: pb.WatchWorkflowEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchWorkflowEventsResponse]:
        async with aclosing(self._s.events.watch(tenant_of(context), request)) as responses:
            async for response in responses:
                yield response

    async def GetFireOutcome(
        self, request: pb.GetFireOutcomeRequest, context: Context
    ) -> pb.GetFireOutcomeResponse:
        return await _complete(self._s.tokens.fire_outcome(tenant_of(context), request))

    # Schedules
    async def CreateScheduleRecord(
        self, request: pb.CreateScheduleRecordRequest, context: Context
    ) -> pb.CreateScheduleRecordResponse:
        return await _complete(self._s.schedules.create(tenant_of(context), request))

    async def GetScheduleRecord(
        self, request: pb.GetScheduleRecordRequest, context: Context
    ) -> pb.GetScheduleRecordResponse:
        return await _complete(self._s.schedules.get(tenant_of(context), request))

    async def ListScheduleRecords(
        self, request: pb.ListScheduleRecordsRequest, context: Context
    ) -> pb.ListScheduleRecordsResponse:
        return await _complete(self._s.schedules.list(tenant_of(context), request))

    async def UpdateScheduleRecord(
        self, request: pb.UpdateScheduleRecordRequest, context: Context
    ) -> pb.UpdateScheduleRecordResponse:
        return await _complete(self._s.schedules.update(tenant_of(context), request))

    async def DeleteScheduleRecord(
        self, request: pb.DeleteScheduleRecordRequest, context: Context
    ) -> pb.DeleteScheduleRecordResponse:
        return await _complete(self._s.schedules.delete(tenant_of(context), request))

    # Due work (every tenant's)
    async def ClaimDueWork(
        self, request: pb.ClaimDueWorkRequest, context: Context
    ) -> pb.ClaimDueWorkResponse:
        return await _complete(self._s.due_work.claim(request))

    async def CompleteDueWork(
        self, request: pb.CompleteDueWorkRequest, context: Context
    ) -> pb.CompleteDueWorkResponse:
        return await _complete(self._s.due_work.complete(request))

    async def ReleaseDueWork(
        self, request: pb.ReleaseDueWorkRequest, context: Context
    ) -> pb.ReleaseDueWorkResponse:
        return await _complete(self._s.due_work.release(request))

    async def RenewDueWork(
        self, request: pb.RenewDueWorkRequest, context: Context
    ) -> pb.RenewDueWorkResponse:
        return await _complete(self._s.due_work.renew(request))
