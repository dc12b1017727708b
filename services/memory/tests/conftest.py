"""Fixtures of the memory service tests: both engines, a fresh database per run, real servers.

Every test that takes ``database_url`` (directly or through ``db``, ``server`` or ``api``)
runs twice: on SQLite and on PostgreSQL. PostgreSQL comes from
:func:`agentmesh_memory.testing.postgres_server`; when none can be found or started the
PostgreSQL half is skipped locally and fails under CI (``CI`` set), so CI never skips it.
Tests isolate themselves by using a fresh random tenant, which also exercises tenancy.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from agentmesh.memory.v1 import workflows_pb2_grpc
from agentmesh_common import (
    MetricFactory,
)
from agentmesh_memory.db import Database
from agentmesh_memory.db.migrate import migrate
from agentmesh_memory.testing import (
    Api,
    PostgresServer,
    PostgresUnavailable,
    RunningMemory,
    fresh_database,
    memory_settings,
    postgres_server,
    start_memory,
)

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    try:
        server = postgres_server()
    except PostgresUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {error}")
        yield None
        return
    try:
        yield server
    finally:
        server.stop()


def _migrate(url: str) -> None:
    async def run() -> None:
        db = Database.open(url, metrics=MetricFactory(CollectorRegistry()))
        try:
            await migrate(db)
        finally:
            await db.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer | None) -> Iterator[str]:
    """A fresh, migrated database for this test run."""
    if postgres is None:
        pytest.skip("no PostgreSQL server available (set AGENTMESH_TEST_POSTGRES_URL)")
    with fresh_database(postgres) as url:
        _migrate(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "memory.db"
    url = f"sqlite+aiosqlite:///{path}"
    _migrate(url)
    return url


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database.open(database_url, metrics=MetricFactory(CollectorRegistry()))
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[RunningMemory]:
    running = await start_memory(memory_settings(database_url))
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def api(server: RunningMemory, tenant: str) -> AsyncIterator[Api]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield Api(channel, tenant)


@pytest.fixture
async def flows(server: RunningMemory, tenant: str) -> AsyncIterator[Api]:
    """The WorkflowStoreService of the same server, as the test's tenant."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield Api(channel, tenant, workflows_pb2_grpc.WorkflowStoreServiceStub)
