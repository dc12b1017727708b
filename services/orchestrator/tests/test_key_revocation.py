"""A revoked API key is refused within a second by a replica that cached it (issue 16,
finding 8): the memory service pushes revocations (`WatchApiKeys`) and the orchestrator's
key cache drops them at once, whichever memory replica revoked the key (PostgreSQL NOTIFY).
"""

from __future__ import annotations

import asyncio
import time

import grpc.aio
import pytest

from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import Unauthenticated
from agentmesh_common import TENANT_METADATA_KEY
from agentmesh_memory.testing import memory_settings, start_memory

from .api_mesh import echo_script, start_mesh

TENANT = "revocations"


async def refused_within(client: AgentmeshClient, seconds: float) -> float:
    """Seconds until `client`'s key is refused; fails once `seconds` passed."""
    started = time.monotonic()
    while True:
        try:
            await client.get_user_settings("default")
        except Unauthenticated as refused:
            took = time.monotonic() - started
            reason = refused.reason
            break
        assert time.monotonic() - started < seconds, (
            f"the revoked key still works after {seconds} s"
        )
        await asyncio.sleep(0.02)
    assert reason == "API_KEY_INVALID"
    return took


@pytest.mark.parametrize("revoked_on", ["same", "other"])
async def test_a_cached_key_is_refused_within_a_second_of_its_revocation(
    database_url: str, revoked_on: str
) -> None:
    if revoked_on == "other" and not database_url.startswith("postgresql"):
        pytest.skip("a second memory replica needs a shared PostgreSQL database")
    mesh, shutdown = await start_mesh(database_url, echo_script)
    # The key is revoked through this memory replica ("other": another replica on the same
    # database, so the news reaches the orchestrator's replica through PostgreSQL).
    other = await start_memory(memory_settings(database_url)) if revoked_on == "other" else None
    channel = grpc.aio.insecure_channel(other.address if other else mesh.memory.address)
    try:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        tenant = ((TENANT_METADATA_KEY, TENANT),)
        created = await memory.CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name="soon revoked"), metadata=tenant, timeout=10
        )
        async with mesh.raw_client(created.secret) as client:
            await client.get_user_settings("default")  # resolved, and now cached for 30 s
            await memory.DeleteApiKey(
                memory_pb2.DeleteApiKeyRequest(name=created.api_key.name),
                metadata=tenant,
                timeout=10,
            )
            took = await refused_within(client, 1.0)
        print(f"refused {took:.3f} s after the revocation ({revoked_on} memory replica)")
        async with mesh.client() as unaffected:  # other keys keep working
            await unaffected.get_user_settings("default")
    finally:
        await channel.close()
        if other is not None:
            await other.stop()
        await shutdown()
