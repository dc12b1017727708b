"""WatchApiKeys: revocations pushed to the replicas that cache keys, and a stopping memory
service ends the watches at once instead of holding its drain for the grace period."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc.aio

from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY
from agentmesh_memory.testing import memory_settings, start_memory


async def test_a_watch_hears_revocations_and_ends_when_the_service_stops(tmp_path: Path) -> None:
    memory = await start_memory(
        memory_settings(
            f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}",
            migrate_on_start="true",
            grace_seconds="10",
        )
    )
    channel = grpc.aio.insecure_channel(memory.address)
    try:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        tenant = ((TENANT_METADATA_KEY, "acme"),)
        created = await stub.CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name="k"), metadata=tenant, timeout=10
        )
        watch = stub.WatchApiKeys(memory_pb2.WatchApiKeysRequest())
        first = await asyncio.wait_for(watch.read(), 10)
        assert first.reset, "the watch starts with a reset"
        await stub.DeleteApiKey(
            memory_pb2.DeleteApiKeyRequest(name=created.api_key.name), metadata=tenant, timeout=10
        )
        change = await asyncio.wait_for(watch.read(), 10)
        assert list(change.revoked) == [created.api_key.name]
        assert not change.reset

        started = time.monotonic()
        await memory.stop()
        assert time.monotonic() - started < 5, "the open watch held the drain"
        assert await asyncio.wait_for(watch.read(), 10) is grpc.aio.EOF
        assert await watch.code() == grpc.StatusCode.OK
    finally:
        await channel.close()
