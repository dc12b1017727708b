"""A revoked API key is refused within a second by every replica that cached it (issue 16,
finding 8), with the services as separate processes: two orchestrator replicas and the
gateway's HTTP API, each having just accepted the key, refuse it once the memory service
revoked it (pushed to them over its WatchApiKeys stream).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc.aio
import httpx
import pytest

from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_cli.mesh import GATEWAY, ORCHESTRATOR, ServiceProcess
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import Unauthenticated
from agentmesh_common import TENANT_METADATA_KEY

from .conftest import ORCHESTRATOR_ENV, Answer, Chat, Mesh

pytestmark = pytest.mark.slow


def hello(_: Chat) -> Answer:
    return Answer(text="hello")


async def orchestrator_accepts(client: AgentmeshClient) -> bool:
    try:
        await client.get_user_settings("default")
    except Unauthenticated:
        return False
    return True


async def gateway_accepts(http: httpx.AsyncClient, url: str, secret: str) -> bool:
    answer = await http.get(f"{url}/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def test_every_replica_refuses_a_revoked_key_within_a_second(mesh_factory: Any) -> None:
    mesh: Mesh = await mesh_factory(hello)
    memory_address = mesh.services["memory"].address
    replica_b = ServiceProcess(
        ORCHESTRATOR,
        {
            **ORCHESTRATOR_ENV,
            "AGENTMESH_ORCHESTRATOR_PORT": "0",
            "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": memory_address,
            "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services["inference-gateway"].address,
            "AGENTMESH_ORCHESTRATOR_REPLICA_ID": "replica-b",
        },
        log_path=mesh.data_dir / "logs" / "orchestrator-b.log",
    )
    http_gateway = ServiceProcess(
        GATEWAY,
        {
            "AGENTMESH_GATEWAY_PORT": "0",
            "AGENTMESH_GATEWAY_METRICS_PORT": "0",
            "AGENTMESH_GATEWAY_HTTP_PORT": "0",
            "AGENTMESH_GATEWAY_MEMORY_TARGET": memory_address,
            "AGENTMESH_GATEWAY_ROUTES_FILE": str(mesh.data_dir / "routes.yaml"),
        },
        log_path=mesh.data_dir / "logs" / "gateway-http.log",
    )
    await asyncio.gather(replica_b.start(), http_gateway.start())
    channel = grpc.aio.insecure_channel(memory_address)
    try:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        tenant = ((TENANT_METADATA_KEY, "e2e"),)
        created = await memory.CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name="soon revoked"), metadata=tenant, timeout=10
        )
        secret = created.secret
        assert http_gateway.http_url is not None
        async with (
            AgentmeshClient(mesh.orchestrator.address, api_key=secret, timeout=20) as client_a,
            AgentmeshClient(replica_b.address, api_key=secret, timeout=20) as client_b,
            httpx.AsyncClient(timeout=20) as http,
        ):
            # Each replica resolves the key once, and caches it for 30 s.
            assert await orchestrator_accepts(client_a)
            assert await orchestrator_accepts(client_b)
            assert await gateway_accepts(http, http_gateway.http_url, secret)

            revoke = memory_pb2.DeleteApiKeyRequest(name=created.api_key.name)
            await memory.DeleteApiKey(revoke, metadata=tenant, timeout=10)
            revoked = time.monotonic()
            refused: dict[str, float] = {}
            while len(refused) < 3:
                checks = {
                    "orchestrator-a": orchestrator_accepts(client_a),
                    "orchestrator-b": orchestrator_accepts(client_b),
                    "gateway-http": gateway_accepts(http, http_gateway.http_url, secret),
                }
                for name, check in checks.items():
                    if name in refused:
                        check.close()
                    elif not await check:
                        refused[name] = time.monotonic() - revoked
                waited = time.monotonic() - revoked
                assert len(refused) == 3 or waited < 1.0, f"still accepted after 1 s: {refused}"
                await asyncio.sleep(0.02)
        print("refused after revocation:", {k: f"{v:.3f} s" for k, v in refused.items()})
    finally:
        await channel.close()
        await asyncio.gather(replica_b.stop(), http_gateway.stop())
