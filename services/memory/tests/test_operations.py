"""Operations: migrations on both engines, schema check at start, health tracking the
database, pool and statement timeouts, Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import make_url

from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import DeadlineExceeded, FailedPrecondition, MetricFactory, Unavailable
from agentmesh_memory.db import Database, DatabaseOptions
from agentmesh_memory.db.tables import METADATA, include_in_schema_comparison
from agentmesh_memory.testing import (
    Api,
    PostgresServer,
    fresh_database,
    memory_settings,
    start_memory,
)

MEMORY_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer | None
) -> object:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    if postgres is None:
        pytest.skip("no PostgreSQL server available")
    with fresh_database(postgres, "agentmesh_migrate") as url:
        yield url


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(MEMORY_DIR / "alembic.ini"), *args],
        env={**os.environ, "AGENTMESH_MEMORY_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=MEMORY_DIR,
    )


async def schema_differences(url: str) -> list[object]:
    db = Database.open(url, metrics=MetricFactory(CollectorRegistry()))
    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(
                        sync, opts={"include_object": include_in_schema_comparison}
                    ),
                    METADATA,
                )
            )
    finally:
        await db.close()


async def test_alembic_upgrade_head_on_its_own_builds_the_exact_schema(empty_database: str) -> None:
    result = await asyncio.to_thread(alembic, empty_database, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert await schema_differences(empty_database) == []
    down = await asyncio.to_thread(alembic, empty_database, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    again = await asyncio.to_thread(alembic, empty_database, "upgrade", "head")
    assert again.returncode == 0, again.stderr


async def test_start_refuses_an_unmigrated_database_unless_asked_to_migrate(
    empty_database: str,
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        await start_memory(memory_settings(empty_database))
    assert caught.value.reason == "SCHEMA_OUTDATED"
    settings = memory_settings(empty_database, migrate_on_start="true")
    if empty_database.startswith("sqlite"):  # one process owns an SQLite file
        running = [await start_memory(settings)]
    else:  # replicas told to migrate, starting together, migrate once (advisory lock)
        running = list(await asyncio.gather(*(start_memory(settings) for _ in range(3))))
    try:
        assert await schema_differences(empty_database) == []
    finally:
        for replica in running:
            await replica.stop()


class Proxy:
    """A TCP relay to PostgreSQL that the test can cut and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update({writer, up_writer})

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.fixture
async def proxied_url(postgres_url: str) -> AsyncIterator[tuple[str, Proxy]]:
    url = make_url(postgres_url)
    proxy = Proxy(url.port or 5432)
    await proxy.open()
    try:
        yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        with contextlib.suppress(Exception):
            await proxy.cut()


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


async def eventually(predicate: object, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        if await predicate():  # type: ignore[operator]
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_health_is_not_serving_while_the_database_is_unreachable(
    proxied_url: tuple[str, Proxy], tenant: str
) -> None:
    url, proxy = proxied_url
    running = await start_memory(
        memory_settings(url, pool_timeout_seconds="1", statement_timeout_seconds="2")
    )
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            serving, not_serving = (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            assert await health_status(channel) == serving
            await proxy.cut()

            async def down() -> bool:
                return (
                    await health_status(channel) == not_serving
                    and await health_status(channel, "agentmesh.memory.v1.MemoryService")
                    == not_serving
                )

            await eventually(down)
            api = Api(channel, tenant)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.ListAgents(memory_pb2.ListAgentsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await proxy.open()  # same port again

            async def up() -> bool:
                return await health_status(channel) == serving

            await eventually(up)
            await api.ListAgents(memory_pb2.ListAgentsRequest())
    finally:
        await running.stop()


async def test_pool_exhaustion_is_unavailable(database_url: str) -> None:
    options = DatabaseOptions(pool_size=1, max_overflow=0, pool_timeout_seconds=0.2)
    db = Database.open(database_url, options, metrics=MetricFactory(CollectorRegistry()))
    try:
        async with db.read("hold"):
            with pytest.raises(Unavailable) as caught:
                async with db.read("starved") as conn:
                    await conn.execute(sa.text("SELECT 1"))
        assert caught.value.reason == "DATABASE_BUSY"
    finally:
        await db.close()


async def test_statement_timeout_is_deadline_exceeded(postgres_url: str) -> None:
    options = DatabaseOptions(statement_timeout_seconds=0.2)
    db = Database.open(postgres_url, options, metrics=MetricFactory(CollectorRegistry()))
    try:
        with pytest.raises(DeadlineExceeded):
            async with db.read("slow") as conn:
                await conn.execute(sa.text("SELECT pg_sleep(2)"))
    finally:
        await db.close()


async def test_metrics_cover_query_latency_and_pool_use(api: Api, server: object) -> None:
    await api.ListAgents(memory_pb2.ListAgentsRequest())
    registry = server.telemetry.registry  # type: ignore[attr-defined]
    text = generate_latest(registry).decode()
    assert (
        'agentmesh_memory_db_operation_seconds_count{operation="ListAgents",outcome="ok"}' in text
    )
    assert 'agentmesh_memory_db_statement_seconds_count{kind="SELECT"}' in text
    assert "agentmesh_memory_db_pool_checked_out" in text
    assert "agentmesh_memory_db_pool_size 10.0" in text
