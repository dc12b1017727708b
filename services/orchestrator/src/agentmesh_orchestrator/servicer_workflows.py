"""gRPC servicers of `agentmesh.workflow.v1`: WorkflowService and ScheduleService.

As OrchestratorService: each RPC resolves the caller's tenant from its API key (one request
from its budget), converts, and delegates to `WorkflowApp`; errors are mapped by the shared
interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agentmesh.workflow.v1 import (
    schedule_pb2,
    schedule_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from .edge import Authenticator, RateLimiter
from .workflows.service import WorkflowApp

Context = Any  # grpc.aio.ServicerContext


class TenantOf:
    """The caller's tenant, one request taken from its budget."""

    def __init__(self, auth: Authenticator, limiter: RateLimiter) -> None:
        self._auth = auth
        self._limiter = limiter

    async def __call__(self, context: Context) -> str:
        tenant = await self._auth.tenant_for(tuple(context.invocation_metadata() or ()))
        self._limiter.admit_request(tenant)
        return tenant


class WorkflowServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """`agentmesh.workflow.v1.WorkflowService`."""

    def __init__(self, app: WorkflowApp, tenant_of: TenantOf) -> None:
        self._app = app
        self._tenant = tenant_of

    async def CreateWorkflow(
        self, request: workflow_service_pb2.CreateWorkflowRequest, context: Context
    ) -> workflow_service_pb2.CreateWorkflowResponse:
        tenant = await self._tenant(context)
        return workflow_service_pb2.CreateWorkflowResponse(
            workflow=await self._app.create_workflow(tenant, request)
        )

    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_service_pb2.GetWorkflowResponse:
        tenant = await self._tenant(context)
        return workflow_service_pb2.GetWorkflowResponse(
            workflow=await self._app.get_workflow(tenant, request.name)
        )

    async def ListWorkflows(
        self, request: workflow_service_pb2.ListWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        return await self._app.list_workflows(await self._tenant(context), request)

    async def UpdateWorkflow(
        self, request: workflow_service_pb2.UpdateWorkflowRequest, context: Context
    ) -> workflow_service_pb2.UpdateWorkflowResponse:
        tenant = await self._tenant(context)
        return workflow_service_pb2.UpdateWorkflowResponse(
            workflow=await self._app.update_workflow(tenant, request)
        )

    async def DeleteWorkflow(
        self, request: workflow_service_pb2.DeleteWorkflowRequest, context: Context
    ) -> workflow_service_pb2.DeleteWorkflowResponse:
        await self._app.delete_workflow(await self._tenant(context), request)
        return workflow_service_pb2.DeleteWorkflowResponse()

    async def CreateToken(
        self, request: workflow_service_pb2.CreateTokenRequest, context: Context
    ) -> workflow_service_pb2.CreateTokenResponse:
        tenant = await self._tenant(context)
        return workflow_service_pb2.CreateTokenResponse(
            token=await self._app.create_token(tenant, request)
        )

    async def GetToken(
        self, request: workflow_service_pb2.GetTokenRequest, context: Context
    ) -> workflow_service_pb2.GetTokenResponse:
        tenant = await self._tenant(context)
        return workflow_service_pb2.GetTokenResponse(
            token=await self._app.get_token(tenant, request.name)
        )

    async def ListTokens(
        self, request: workflow_service_pb2.ListTokensRequest, context: Context
    ) -> workflow_service_pb2.ListTokensResponse:
        return await self._app.list_tokens(await self._tenant(context), request)

    async def FireTransition(
        self, request: workflow_service_pb2.FireTransitionRequest, context: Context
    ) -> workflow_service_pb2.FireTransitionResponse:
        outcome = await self._app.fire(await self._tenant(context), request)
        return workflow_service_pb2.FireTransitionResponse(
            token=outcome.token, fired=outcome.fired, event_seq=outcome.event_seq
        )

    async def StreamWorkflow(
        self, request: workflow_service_pb2.StreamWorkflowRequest, context: Context
    ) -> AsyncIterator[workflow_service_pb2.StreamWorkflowResponse]:
        tenant = await self._tenant(context)
        async for event in self._app.events(tenant, request.workflow, request.after_seq):
            yield workflow_service_pb2.StreamWorkflowResponse(event=event)

    async def StreamToken(
        self, request: workflow_service_pb2.StreamTokenRequest, context: Context
    ) -> AsyncIterator[workflow_service_pb2.StreamTokenResponse]:
        tenant = await self._tenant(context)
        workflow = "/".join(request.token.split("/")[:2])
        async for event in self._app.events(
            tenant, workflow, request.after_seq, token=request.token
        ):
            yield workflow_service_pb2.StreamTokenResponse(event=event)


class ScheduleServicer(schedule_pb2_grpc.ScheduleServiceServicer):
    """`agentmesh.workflow.v1.ScheduleService`."""

    def __init__(self, app: WorkflowApp, tenant_of: TenantOf) -> None:
        self._app = app
        self._tenant = tenant_of

    async def CreateSchedule(
        self, request: schedule_pb2.CreateScheduleRequest, context: Context
    ) -> schedule_pb2.CreateScheduleResponse:
        tenant = await self._tenant(context)
        return schedule_pb2.CreateScheduleResponse(
            schedule=await self._app.create_schedule(tenant, request)
        )

    async def GetSchedule(
        self, request: schedule_pb2.GetScheduleRequest, context: Context
    ) -> schedule_pb2.GetScheduleResponse:
        tenant = await self._tenant(context)
        return schedule_pb2.GetScheduleResponse(
            schedule=await self._app.get_schedule(tenant, request.name)
        )

    async def ListSchedules(
        self, request: schedule_pb2.ListSchedulesRequest, context: Context
    ) -> schedule_pb2.ListSchedulesResponse:
        return await self._app.list_schedules(await self._tenant(context), request)

    async def UpdateSchedule(
        self, request: schedule_pb2.UpdateScheduleRequest, context: Context
    ) -> schedule_pb2.UpdateScheduleResponse:
        tenant = await self._tenant(context)
        return schedule_pb2.UpdateScheduleResponse(
            schedule=await self._app.update_schedule(tenant, request)
        )

    async def DeleteSchedule(
        self, request: schedule_pb2.DeleteScheduleRequest, context: Context
    ) -> schedule_pb2.DeleteScheduleResponse:
        await self._app.delete_schedule(await self._tenant(context), request.name)
        return schedule_pb2.DeleteScheduleResponse()
