"""The memory service as a real process on each engine: migrates at start, serves, and exits
0 on SIGTERM while a WatchEvents stream is open."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_cli.mesh import MEMORY, ServiceProcess
from agentmesh_memory.testing import Api, PostgresServer, fresh_database

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer | None
) -> object:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'memory.db'}"
        return
    if postgres is None:
        pytest.skip("no PostgreSQL server available")
    with fresh_database(postgres, "agentmesh_process") as url:
        yield url


async def test_process_migrates_serves_and_stops_cleanly(fresh_url: str, tmp_path: Path) -> None:
    env = {
        "AGENTMESH_MEMORY_PORT": "0",
        "AGENTMESH_MEMORY_METRICS_PORT": "0",
        "AGENTMESH_MEMORY_GRACE_SECONDS": "2",
        "AGENTMESH_MEMORY_DATABASE_URL": fresh_url,
        "AGENTMESH_MEMORY_MIGRATE_ON_START": "true",
    }
    process = ServiceProcess(MEMORY, env, log_path=tmp_path / "memory.log")
    await process.start()
    try:
        await process.wait_healthy(within_seconds=20)
        async with grpc.aio.insecure_channel(process.address) as channel:
            api = Api(channel, "tenant-process")
            session = (
                await api.CreateSession(
                    memory_pb2.CreateSessionRequest(session=sessions_pb2.Session(goal="g"))
                )
            ).session.name
            event = events_pb2.SessionEvent(content_delta=events_pb2.ContentDelta(text="x"))
            await api.AppendEvents(memory_pb2.AppendEventsRequest(session=session, events=[event]))
            watch = api.WatchEvents(memory_pb2.WatchEventsRequest(session=session))
            first = await watch.read()
            assert [e.seq for e in first.events] == [1]

            assert process.process is not None
            started = time.monotonic()
            process.process.terminate()
            ended_with: grpc.StatusCode | None = None
            try:  # the open stream is cut at the end of the grace period
                while await asyncio.wait_for(watch.read(), 10) is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as error:
                ended_with = error.code()
            assert ended_with in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            code = await asyncio.wait_for(process.process.wait(), 15)
            assert code == 0
            assert time.monotonic() - started < 8
    finally:
        await process.stop(grace=5)
    log = (tmp_path / "memory.log").read_text()
    assert "password" not in log.lower()
