"""gRPC servicer of the orchestrator: authenticate, rate-limit, convert, delegate.

Each RPC resolves the caller's tenant from its API key, takes one request from the tenant's
budget, and hands the request to `OrchestratorApp` (sessions) or passes it through to the
memory service or gateway (agents, memory, settings, usage, models). Domain errors raised
anywhere below are mapped to status codes by the shared interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agentmesh.common.v1 import events_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh.memory.v1 import memory_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh_common import from_rpc_error

from . import pages
from .adapters.memory_client import MemoryClient
from .edge import Authenticator, RateLimiter
from .pages import page
from .service import OrchestratorApp
from .servicer_knowledge import KnowledgeRpcs
from .sessions import TERMINAL_EVENTS, SessionManager
from .tool_servers import ToolCatalog, as_public

Context = Any  # grpc.aio.ServicerContext: its stubs are generic, the runtime class is not
T = TypeVar("T")


class OrchestratorServicer(KnowledgeRpcs, orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """`agentmesh.orchestrator.v1.OrchestratorService`."""

    def __init__(
        self,
        *,
        app: OrchestratorApp,
        memory: MemoryClient,
        catalog: inference_pb2_grpc.InferenceServiceAsyncStub,
        manager: SessionManager,
        auth: Authenticator,
        limiter: RateLimiter,
        catalog_tools: ToolCatalog,
    ) -> None:
        self._app = app
        self._memory = memory
        self._catalog = catalog
        self._manager = manager
        self._auth = auth
        self._limiter = limiter
        self._tools = catalog_tools

    async def _tenant(self, context: Context, *, session: str | None = None) -> str:
        """The caller's tenant, one request taken from its budget. ``session``: the call is
        about that session only, so a stream token issued for it is accepted too."""
        metadata = tuple(context.invocation_metadata() or ())
        tenant = await self._auth.tenant_for(metadata, session=session)
        self._limiter.admit_request(tenant)
        return tenant

    async def _memory_call(
        self, context: Context, method: Callable[..., Awaitable[T]], request: object
    ) -> T:
        tenant = await self._tenant(context)
        return await self._memory.call(tenant, method, request)

    # -- agents ------------------------------------------------------------------------------

    async def CreateAgent(
        self, request: orchestrator_pb2.CreateAgentRequest, context: Context
    ) -> orchestrator_pb2.CreateAgentResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.CreateAgentResponse(
            agent=await self._app.create_agent(tenant, request)
        )

    async def GetAgent(
        self, request: orchestrator_pb2.GetAgentRequest, context: Context
    ) -> orchestrator_pb2.GetAgentResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.GetAgentResponse(
            agent=await self._app.get_agent(tenant, request.name)
        )

    async def ListAgents(
        self, request: orchestrator_pb2.ListAgentsRequest, context: Context
    ) -> orchestrator_pb2.ListAgentsResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.ListAgents,
            memory_pb2.ListAgentsRequest(
                page_size=request.page_size, page_token=request.page_token, type=request.type
            ),
        )
        return orchestrator_pb2.ListAgentsResponse(
            agents=reply.agents, next_page_token=reply.next_page_token
        )

    async def UpdateAgent(
        self, request: orchestrator_pb2.UpdateAgentRequest, context: Context
    ) -> orchestrator_pb2.UpdateAgentResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.UpdateAgentResponse(
            agent=await self._app.update_agent(tenant, request)
        )

    async def DeleteAgent(
        self, request: orchestrator_pb2.DeleteAgentRequest, context: Context
    ) -> orchestrator_pb2.DeleteAgentResponse:
        await self._memory_call(
            context,
            self._memory.stub.DeleteAgent,
            memory_pb2.DeleteAgentRequest(name=request.name, request_id=request.request_id),
        )
        return orchestrator_pb2.DeleteAgentResponse()

    # -- sessions ----------------------------------------------------------------------------

    async def CreateSession(
        self, request: orchestrator_pb2.CreateSessionRequest, context: Context
    ) -> orchestrator_pb2.CreateSessionResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.CreateSessionResponse(
            session=await self._app.create_session(tenant, request)
        )

    async def AddAgent(
        self, request: orchestrator_pb2.AddAgentRequest, context: Context
    ) -> orchestrator_pb2.AddAgentResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.AddAgentResponse(session=await self._app.add_agent(tenant, request))

    async def Step(
        self, request: orchestrator_pb2.StepRequest, context: Context
    ) -> AsyncIterator[orchestrator_pb2.StepResponse]:
        tenant = await self._tenant(context)
        self._limiter.admit_tokens(tenant)
        async for event in self._follow(
            tenant, request.session, self._app.run(tenant, request.session, single_step=True)
        ):
            yield orchestrator_pb2.StepResponse(event=event)

    async def Run(
        self, request: orchestrator_pb2.RunRequest, context: Context
    ) -> AsyncIterator[orchestrator_pb2.RunResponse]:
        tenant = await self._tenant(context)
        self._limiter.admit_tokens(tenant)
        async for event in self._follow(
            tenant, request.session, self._app.run(tenant, request.session)
        ):
            yield orchestrator_pb2.RunResponse(event=event)

    async def Execute(
        self, request: orchestrator_pb2.ExecuteRequest, context: Context
    ) -> AsyncIterator[orchestrator_pb2.ExecuteResponse]:
        tenant = await self._tenant(context)
        self._limiter.admit_tokens(tenant)
        events = self._app.execute(tenant, request)
        async for event in self._follow(tenant, None, events):
            yield orchestrator_pb2.ExecuteResponse(event=event)

    async def StreamSession(
        self, request: orchestrator_pb2.StreamSessionRequest, context: Context
    ) -> AsyncIterator[orchestrator_pb2.StreamSessionResponse]:
        tenant = await self._tenant(context, session=request.session)
        events = await self._app.open_stream(tenant, request)
        if events is None:
            return  # ended, and nothing after after_seq
        # Accepted: say so now, so a client (the web edge) can tell an idle stream from one
        # that is still being checked before any event exists.
        await context.send_initial_metadata(())
        async for event in events:
            yield orchestrator_pb2.StreamSessionResponse(event=event)

    async def _follow(
        self,
        tenant: str,
        session: str | None,
        events: AsyncIterator[events_pb2.SessionEvent],
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Relay a run's events; cancel it if the caller leaves and asked (the run's model
        calls charge the tenant's tokens themselves, as they start and end)."""
        name = session or ""
        ended = False
        try:
            async for event in events:
                name = name or event.session
                kind = event.WhichOneof("payload")
                ended = kind in TERMINAL_EVENTS
                yield event
        finally:
            if not ended and name:
                await asyncio.shield(self._cancel_if_asked(tenant, name))

    async def _cancel_if_asked(self, tenant: str, name: str) -> None:
        with contextlib.suppress(Exception):
            session = await self._memory.get_session(tenant, name)
            if session.cancel_on_disconnect:
                await self._manager.cancel(tenant, name, reason="client_disconnected")

    async def CreateStreamToken(
        self, request: orchestrator_pb2.CreateStreamTokenRequest, context: Context
    ) -> orchestrator_pb2.CreateStreamTokenResponse:
        tenant = await self._tenant(context)
        return await self._app.create_stream_token(tenant, request, self._auth.stream_tokens)

    async def SendMessage(
        self, request: orchestrator_pb2.SendMessageRequest, context: Context
    ) -> orchestrator_pb2.SendMessageResponse:
        tenant = await self._tenant(context)
        return await self._app.send_message(tenant, request)

    async def CancelSession(
        self, request: orchestrator_pb2.CancelSessionRequest, context: Context
    ) -> orchestrator_pb2.CancelSessionResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.CancelSessionResponse(
            session=await self._app.cancel_session(tenant, request.session)
        )

    async def EndSession(
        self, request: orchestrator_pb2.EndSessionRequest, context: Context
    ) -> orchestrator_pb2.EndSessionResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.EndSessionResponse(
            session=await self._app.end_session(tenant, request.session)
        )

    async def GetSession(
        self, request: orchestrator_pb2.GetSessionRequest, context: Context
    ) -> orchestrator_pb2.GetSessionResponse:
        tenant = await self._tenant(context, session=request.name)
        return await self._app.get_session(tenant, request.name)

    async def ApproveToolCall(
        self, request: orchestrator_pb2.ApproveToolCallRequest, context: Context
    ) -> orchestrator_pb2.ApproveToolCallResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.ApproveToolCallResponse(
            approval=await self._app.answer_tool_call(tenant, request, approve=True)
        )

    async def RejectToolCall(
        self, request: orchestrator_pb2.RejectToolCallRequest, context: Context
    ) -> orchestrator_pb2.RejectToolCallResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.RejectToolCallResponse(
            approval=await self._app.answer_tool_call(tenant, request, approve=False)
        )

    async def ListSessions(
        self, request: orchestrator_pb2.ListSessionsRequest, context: Context
    ) -> orchestrator_pb2.ListSessionsResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.ListSessions,
            memory_pb2.ListSessionsRequest(
                page_size=request.page_size,
                page_token=request.page_token,
                status=request.status,
                parent=request.parent,
            ),
        )
        return orchestrator_pb2.ListSessionsResponse(
            sessions=reply.sessions, next_page_token=reply.next_page_token
        )

    # -- agent memory and settings (passed through to the memory service) --------------------

    async def GetMemory(
        self, request: orchestrator_pb2.GetMemoryRequest, context: Context
    ) -> orchestrator_pb2.GetMemoryResponse:
        reply = await self._memory_call(
            context, self._memory.stub.GetMemory, memory_pb2.GetMemoryRequest(name=request.name)
        )
        return orchestrator_pb2.GetMemoryResponse(entry=reply.entry)

    async def PutMemory(
        self, request: orchestrator_pb2.PutMemoryRequest, context: Context
    ) -> orchestrator_pb2.PutMemoryResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.PutMemory,
            memory_pb2.PutMemoryRequest(
                entry=request.entry,
                ttl=request.ttl if request.HasField("ttl") else None,
                request_id=request.request_id,
            ),
        )
        return orchestrator_pb2.PutMemoryResponse(entry=reply.entry)

    async def ListMemories(
        self, request: orchestrator_pb2.ListMemoriesRequest, context: Context
    ) -> orchestrator_pb2.ListMemoriesResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.ListMemories,
            memory_pb2.ListMemoriesRequest(
                parent=request.parent,
                page_size=request.page_size,
                page_token=request.page_token,
                type=request.type,
            ),
        )
        return orchestrator_pb2.ListMemoriesResponse(
            entries=reply.entries, next_page_token=reply.next_page_token
        )

    async def DeleteMemory(
        self, request: orchestrator_pb2.DeleteMemoryRequest, context: Context
    ) -> orchestrator_pb2.DeleteMemoryResponse:
        await self._memory_call(
            context,
            self._memory.stub.DeleteMemory,
            memory_pb2.DeleteMemoryRequest(name=request.name, request_id=request.request_id),
        )
        return orchestrator_pb2.DeleteMemoryResponse()

    async def GetUserSettings(
        self, request: orchestrator_pb2.GetUserSettingsRequest, context: Context
    ) -> orchestrator_pb2.GetUserSettingsResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.GetUserSettings,
            memory_pb2.GetUserSettingsRequest(name=request.name),
        )
        return orchestrator_pb2.GetUserSettingsResponse(settings=reply.settings)

    async def UpdateUserSettings(
        self, request: orchestrator_pb2.UpdateUserSettingsRequest, context: Context
    ) -> orchestrator_pb2.UpdateUserSettingsResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.UpdateUserSettings,
            memory_pb2.UpdateUserSettingsRequest(
                settings=request.settings,
                update_mask=request.update_mask,
                request_id=request.request_id,
            ),
        )
        return orchestrator_pb2.UpdateUserSettingsResponse(settings=reply.settings)

    # -- tools, models and usage -------------------------------------------------------------

    async def CreateToolServer(
        self, request: orchestrator_pb2.CreateToolServerRequest, context: Context
    ) -> orchestrator_pb2.CreateToolServerResponse:
        tenant = await self._tenant(context)
        return orchestrator_pb2.CreateToolServerResponse(
            tool_server=await self._tools.register(tenant, request)
        )

    async def GetToolServer(
        self, request: orchestrator_pb2.GetToolServerRequest, context: Context
    ) -> orchestrator_pb2.GetToolServerResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.GetToolServer,
            memory_pb2.GetToolServerRequest(name=request.name),
        )
        return orchestrator_pb2.GetToolServerResponse(tool_server=as_public(reply.tool_server))

    async def ListToolServers(
        self, request: orchestrator_pb2.ListToolServersRequest, context: Context
    ) -> orchestrator_pb2.ListToolServersResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.ListToolServers,
            memory_pb2.ListToolServersRequest(
                page_size=request.page_size, page_token=request.page_token
            ),
        )
        return orchestrator_pb2.ListToolServersResponse(
            tool_servers=[as_public(record) for record in reply.tool_servers],
            next_page_token=reply.next_page_token,
        )

    async def DeleteToolServer(
        self, request: orchestrator_pb2.DeleteToolServerRequest, context: Context
    ) -> orchestrator_pb2.DeleteToolServerResponse:
        await self._memory_call(
            context,
            self._memory.stub.DeleteToolServer,
            memory_pb2.DeleteToolServerRequest(name=request.name),
        )
        return orchestrator_pb2.DeleteToolServerResponse()

    async def ListTools(
        self, request: orchestrator_pb2.ListToolsRequest, context: Context
    ) -> orchestrator_pb2.ListToolsResponse:
        tenant = await self._tenant(context)
        tools = [
            orchestrator_pb2.AvailableTool(spec=tool.spec, source="builtin")
            for _, tool in sorted(self._tools.builtins.items())
        ]
        for record in await self._tools.records(tenant):
            tools.extend(
                orchestrator_pb2.AvailableTool(spec=spec, source=record.name)
                for spec in record.tools
            )
        chosen, token = page(
            tools, lambda t: f"{t.source}\x00{t.spec.name}", request.page_size, request.page_token
        )
        return orchestrator_pb2.ListToolsResponse(tools=chosen, next_page_token=token)

    async def ListModels(
        self, request: orchestrator_pb2.ListModelsRequest, context: Context
    ) -> orchestrator_pb2.ListModelsResponse:
        await self._tenant(context)
        pages.check(request.page_size, request.page_token)  # bad input before any call
        try:
            reply = await self._catalog.ListModels(
                inference_pb2.ListModelsRequest(page_size=1000), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        routes: dict[str, orchestrator_pb2.Model] = {}
        for info in sorted(reply.models, key=lambda m: (m.route, m.priority)):
            model = routes.get(info.route)
            if model is None:
                model = routes[info.route] = orchestrator_pb2.Model(
                    route=info.route,
                    provider=info.provider,
                    model=info.model,
                    context_window_tokens=info.context_window_tokens,
                )
            model.deployments.append(f"{info.provider}/{info.model}")
        chosen, token = page(
            list(routes.values()), lambda m: m.route, request.page_size, request.page_token
        )
        return orchestrator_pb2.ListModelsResponse(models=chosen, next_page_token=token)

    async def GetProviderStatus(
        self, request: orchestrator_pb2.GetProviderStatusRequest, context: Context
    ) -> orchestrator_pb2.GetProviderStatusResponse:
        await self._tenant(context)
        try:
            reply = await self._catalog.GetProviderStatus(
                inference_pb2.GetProviderStatusRequest(provider=request.provider), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return orchestrator_pb2.GetProviderStatusResponse(
            providers=[
                orchestrator_pb2.ProviderStatus(
                    route=status.model.route,
                    deployment=status.model.deployment,
                    provider=status.model.provider,
                    model=status.model.model,
                    health=status.health,
                    circuit_state=status.circuit_state,
                    rpm_remaining=status.rpm_remaining if status.rpm_limit else -1,
                    tpm_remaining=status.tpm_remaining if status.tpm_limit else -1,
                )
                for status in reply.deployments
            ]
        )

    async def GetUsage(
        self, request: orchestrator_pb2.GetUsageRequest, context: Context
    ) -> orchestrator_pb2.GetUsageResponse:
        reply = await self._memory_call(
            context,
            self._memory.stub.GetUsage,
            memory_pb2.GetUsageRequest(
                group_by=request.group_by,
                session=request.session,
                start_time=request.start_time if request.HasField("start_time") else None,
                end_time=request.end_time if request.HasField("end_time") else None,
            ),
        )
        return orchestrator_pb2.GetUsageResponse(
            rows=[
                orchestrator_pb2.UsageRow(key=row.key, usage=row.usage, calls=row.calls)
                for row in reply.rows
            ],
            total=reply.total,
        )
