"""The orchestrator's gRPC server in-process over a real memory service (SQLite and PostgreSQL),
models scripted: what the API tests share. The fixtures that use it live in conftest.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
from opentelemetry.sdk.trace import TracerProvider

from agentmesh.common.v1 import agents_pb2, events_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_cli.mesh import create_api_key
from agentmesh_client.client import AgentmeshClient
from agentmesh_common import (
    Registration,
    ServiceServer,
    Telemetry,
    create_channel,
    load_settings,
    serve,
)
from agentmesh_memory.testing import RunningMemory, memory_settings, start_memory
from agentmesh_orchestrator.adapters.memory_client import MemoryClient
from agentmesh_orchestrator.app import compose
from agentmesh_orchestrator.settings import OrchestratorSettings
from agentmesh_orchestrator.testing import Reply, ScriptedGateway, system_prompt


def echo_script(request: inference_pb2.GenerateRequest) -> Reply:
    name = system_prompt(request).split(".")[0]
    return Reply(text=f"{name} says hi", chunks=3)


@dataclass
class Mesh:
    """An orchestrator over a real memory service, with a scripted model."""

    orchestrator: ServiceServer
    memory: RunningMemory
    gateway: ScriptedGateway
    telemetry: Telemetry
    keys: dict[str, str]
    # Stops the orchestrator as SIGTERM does (the memory service keeps running).
    stop_orchestrator: Callable[[], Awaitable[None]]

    def client(self, tenant: str = "acme") -> AgentmeshClient:
        return AgentmeshClient(
            f"127.0.0.1:{self.orchestrator.port}", api_key=self.keys[tenant], timeout=10
        )

    def raw_client(self, api_key: str) -> AgentmeshClient:
        return AgentmeshClient(f"127.0.0.1:{self.orchestrator.port}", api_key=api_key, timeout=10)


async def start_mesh(
    database_url: str, script: Callable[[inference_pb2.GenerateRequest], Reply], **settings: str
) -> tuple[Mesh, Callable[[], asyncio.Future[None]]]:
    memory = await start_memory(memory_settings(database_url, migrate_on_start="true"))
    gateway = ScriptedGateway(script)
    env = {
        "AGENTMESH_ORCHESTRATOR_PORT": "0",
        "AGENTMESH_ORCHESTRATOR_METRICS_PORT": "off",
        "AGENTMESH_ORCHESTRATOR_GRACE_SECONDS": "1",
        "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": memory.address,
        "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": "127.0.0.1:1",
        "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
        "AGENTMESH_ORCHESTRATOR_TOKENS_PER_MINUTE": "0",
    } | {f"AGENTMESH_ORCHESTRATOR_{k.upper()}": v for k, v in settings.items()}
    orchestrator_settings = load_settings(OrchestratorSettings, env)
    telemetry = Telemetry(service_name="orchestrator", tracer_provider=TracerProvider())

    async def build(
        stack: AsyncExitStack, config: OrchestratorSettings, tel: Telemetry
    ) -> list[Registration]:
        channel = create_channel(memory.address, tracer_provider=tel.tracer_provider)
        stack.push_async_callback(channel.close, None)
        catalog = inference_pb2_grpc.InferenceServiceStub(grpc.aio.insecure_channel("127.0.0.1:1"))
        return compose(
            stack, config, tel, memory=MemoryClient(channel), models=gateway, catalog=catalog
        )

    stop = asyncio.Event()
    started: asyncio.Future[ServiceServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            "orchestrator",
            orchestrator_settings,
            build,
            telemetry=telemetry,
            stop=stop,
            on_started=lambda server, _: started.set_result(server),
        )
    )
    server = await started
    keys = {
        tenant: await create_api_key(memory.address, tenant, "test")
        for tenant in (f"acme-{uuid.uuid4().hex[:6]}", f"globex-{uuid.uuid4().hex[:6]}")
    }
    named = dict(zip(("acme", "globex"), keys.values(), strict=True))

    async def stop_orchestrator() -> None:
        stop.set()  # what the SIGTERM handler of `agentmesh_common.runtime.serve` does
        await task

    async def shutdown() -> None:
        await stop_orchestrator()
        await memory.stop()

    mesh = Mesh(server, memory, gateway, telemetry, named, stop_orchestrator)
    return mesh, shutdown  # type: ignore[return-value]


def agent(agent_id: str, **fields: object) -> agents_pb2.AgentDefinition:
    definition = agents_pb2.AgentDefinition(
        name=agent_id,
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        model=agents_pb2.ModelSelection(route="default"),
        prompts=agents_pb2.AgentPrompts(system=f"{agent_id.capitalize()}. Be brief."),
    )
    for key, value in fields.items():
        if key == "tools":
            definition.tools.extend(value)  # type: ignore[arg-type]
        elif key == "prompts":
            definition.prompts.MergeFrom(value)  # type: ignore[arg-type]
        else:
            setattr(definition, key, value)
    return definition


def kinds(events: list[events_pb2.SessionEvent]) -> list[str]:
    return [str(e.WhichOneof("payload")) for e in events]


async def collect(stream: AsyncIterator[events_pb2.SessionEvent]) -> list[events_pb2.SessionEvent]:
    return [event async for event in stream]
