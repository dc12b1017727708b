"""Composition root of the orchestrator: settings, channels, clients, engine, servicer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

from agentmesh.inference.v1 import inference_pb2_grpc
from agentmesh.memory.v1 import memory_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2_grpc
from agentmesh.workflow.v1 import schedule_pb2_grpc, workflow_service_pb2_grpc
from agentmesh_common import NotFound, Registration, Telemetry, Unauthenticated, create_channel
from agentmesh_common.api_keys import KeyOwner

from .adapters.gateway_client import GatewayClient
from .adapters.memory_client import MemoryClient
from .admission import Admission, AdmissionSettings, admitted_unary
from .agents import resolve_agents
from .context import ContextAssembler
from .edge import Authenticator, RateLimiter
from .engine import EngineSettings, SessionEngine
from .knowledge import knowledge_tools
from .messaging import messaging_tools
from .observability import OrchestratorMetrics
from .ports import ModelGateway
from .preferences import SessionScope
from .service import OrchestratorApp
from .servicer import OrchestratorServicer
from .servicer_workflows import ScheduleServicer, TenantOf, WorkflowServicer
from .sessions import LeaseSettings, SessionManager
from .settings import OrchestratorSettings
from .stream_tokens import StreamTokens
from .tool_servers import ToolCatalog
from .tools import builtin_tools, memory_tools
from .workflows.scheduler import DueWorkLoop
from .workflows.work import start_workflows

SERVICE_NAME = "orchestrator"
GRPC_SERVICE = "agentmesh.orchestrator.v1.OrchestratorService"
WORKFLOW_SERVICE = "agentmesh.workflow.v1.WorkflowService"
SCHEDULE_SERVICE = "agentmesh.workflow.v1.ScheduleService"

_logger = logging.getLogger("agentmesh.orchestrator")


async def build(
    stack: AsyncExitStack, settings: OrchestratorSettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the channels to memory and the gateway, then compose the service."""
    memory_channel = create_channel(
        settings.memory_target, tracer_provider=telemetry.tracer_provider, retry_unavailable=True
    )
    stack.push_async_callback(memory_channel.close, None)
    gateway_channel = create_channel(
        settings.gateway_target, tracer_provider=telemetry.tracer_provider, default_timeout=None
    )
    stack.push_async_callback(gateway_channel.close, None)
    gateway = GatewayClient(
        gateway_channel, unavailable_seconds=settings.gateway_unavailable_seconds
    )
    return compose(
        stack,
        settings,
        telemetry,
        memory=MemoryClient(memory_channel),
        models=gateway,
        catalog=gateway.stub,
    )


def compose(
    stack: AsyncExitStack,
    settings: OrchestratorSettings,
    telemetry: Telemetry,
    *,
    memory: MemoryClient,
    models: ModelGateway,
    catalog: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> list[Registration]:
    """Wire the orchestrator over a memory client and a model gateway (tests inject theirs)."""
    tools = builtin_tools() | memory_tools(memory) | knowledge_tools(memory) | messaging_tools()
    catalog_tools = ToolCatalog(memory, tools)
    stack.push_async_callback(catalog_tools.close)
    metrics = OrchestratorMetrics.create(telemetry.registry)
    admission = Admission(
        AdmissionSettings(
            max_running_sessions=settings.max_running_sessions,
            max_queued_sessions=settings.max_queued_sessions,
            max_concurrent_requests=settings.max_concurrent_requests,
            max_queued_requests=settings.max_queued_requests,
            queue_seconds=settings.admission_queue_seconds,
            retry_after_seconds=settings.admission_retry_after_seconds,
        ),
        metrics,
    )
    limiter = RateLimiter(
        requests_per_minute=settings.requests_per_minute,
        tokens_per_minute=settings.tokens_per_minute,
        unthrottled=settings.unthrottled_tenants,
    )
    engine = SessionEngine(
        tenant_tokens=limiter,
        store=memory,
        gateway=models,
        tools=tools,
        settings=EngineSettings(
            default_route=settings.default_route,
            builtin_context_window_tokens=settings.builtin_context_window_tokens,
            router_shortcuts=settings.router_shortcuts,
            default_approval_timeout_seconds=settings.approval_timeout_seconds,
        ),
        metrics=metrics,
        tracer=telemetry.tracer("agentmesh.orchestrator"),
        context=ContextAssembler(
            recall=memory,
            inbox=memory,
            documents=memory,
            retrieval_passages=settings.retrieval_passages,
        ),
    )
    manager = SessionManager(
        engine=engine,
        store=memory,
        resolve_agents=resolve_agents,
        owner=settings.replica_id,
        lease=LeaseSettings(ttl_seconds=settings.lease_ttl_seconds),
        metrics=metrics,
        tools_for=catalog_tools.tools_for,
        scope_for=partial(SessionScope.load, memory),
        admission=admission,
    )
    # SIGTERM drains the manager while the server drains its RPCs (`on_stopping`), so runs
    # stop at a turn boundary and their streams end before the server's grace runs out.
    drain_grace = min(settings.drain_grace_seconds, settings.grace_seconds / 2)
    stack.push_async_callback(manager.shutdown, drain_grace)
    manager.start_takeover(memory.list_orphaned, settings.takeover_interval_seconds)

    async def resolve_key(secret: str) -> KeyOwner | None:
        try:
            reply = await memory.call(
                "",
                memory.stub.AuthenticateApiKey,
                memory_pb2.AuthenticateApiKeyRequest(secret=secret),
            )
        except (NotFound, Unauthenticated):
            return None
        return KeyOwner(reply.api_key.tenant, reply.api_key.name)

    auth = Authenticator(
        resolve_key,
        stream_tokens=_stream_tokens(settings),
        cache_seconds=settings.api_key_cache_seconds,
    )
    # Revoked keys are dropped from the cache as the memory service announces them.
    key_watch = asyncio.create_task(
        auth.keys.follow(lambda: memory.stub.WatchApiKeys(memory_pb2.WatchApiKeysRequest()))
    )

    async def stop_key_watch() -> None:
        key_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await key_watch

    stack.push_async_callback(stop_key_watch)

    app = OrchestratorApp(memory=memory, manager=manager)
    servicer = OrchestratorServicer(
        app=app,
        memory=memory,
        catalog=catalog,
        manager=manager,
        auth=auth,
        limiter=limiter,
        catalog_tools=catalog_tools,
    )
    workflows, due_work = start_workflows(stack, settings, memory=memory, app=app)
    tenant_of = TenantOf(auth, limiter)
    return [
        Registration(
            GRPC_SERVICE,
            partial(
                orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
                admitted_unary(servicer, admission.requests),
            ),
            on_stopping=partial(_drain, due_work, manager, drain_grace),
        ),
        Registration(
            WORKFLOW_SERVICE,
            partial(
                workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server,
                admitted_unary(WorkflowServicer(workflows, tenant_of), admission.requests),
            ),
        ),
        Registration(
            SCHEDULE_SERVICE,
            partial(
                schedule_pb2_grpc.add_ScheduleServiceServicer_to_server,
                admitted_unary(ScheduleServicer(workflows, tenant_of), admission.requests),
            ),
        ),
    ]


async def _drain(due_work: DueWorkLoop, manager: SessionManager, grace_seconds: float) -> None:
    """SIGTERM: claim no more due work (what runs is given back), then drain the sessions."""
    await due_work.stop()
    await manager.drain(grace_seconds)


def _stream_tokens(settings: OrchestratorSettings) -> StreamTokens:
    if settings.stream_token_secret is None:
        _logger.warning(
            "no stream token secret is set: stream tokens work only on this replica"
            " (set AGENTMESH_ORCHESTRATOR_STREAM_TOKEN_SECRET on every replica)"
        )
        return StreamTokens(secrets.token_bytes(32))
    return StreamTokens(settings.stream_token_secret.get_secret_value().encode())
