"""Fixtures for engine tests on the in-memory ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import pytest

from agentmesh.common.v1 import agents_pb2, events_pb2, sessions_pb2
from agentmesh_memory.testing import (
    PostgresServer,
    PostgresUnavailable,
    fresh_database,
    postgres_server,
)
from agentmesh_orchestrator.agents import SessionAgent, prepare_agent
from agentmesh_orchestrator.engine import EngineSettings, SessionEngine
from agentmesh_orchestrator.testing import InMemorySessionStore, Script, ScriptedGateway
from agentmesh_orchestrator.tools import builtin_tools

from .api_mesh import Mesh, echo_script, start_mesh

TENANT = "tenant-a"


def make_agent(
    agent_id: str,
    kind: agents_pb2.AgentType.ValueType = agents_pb2.AGENT_TYPE_CUSTOM,
    *,
    system: str = "",
    tools: Sequence[str] = (),
    user_template: str = "",
) -> SessionAgent:
    return prepare_agent(
        agents_pb2.AgentDefinition(
            name=f"agents/{agent_id}",
            type=kind,
            model=agents_pb2.ModelSelection(route="default"),
            prompts=agents_pb2.AgentPrompts(system=system, user_template=user_template),
            tools=tools,
        )
    )


def make_session(
    strategy: sessions_pb2.Strategy.ValueType, goal: str = "Plan a picnic", **fields: object
) -> sessions_pb2.Session:
    session = sessions_pb2.Session(
        name="sessions/s1",
        goal=goal,
        strategy=strategy,
        status=sessions_pb2.SESSION_STATUS_PENDING,
        **fields,  # type: ignore[arg-type]
    )
    return session


class Harness:
    """An engine over an in-memory store and a scripted gateway."""

    def __init__(self, script: Script, settings: EngineSettings | None = None) -> None:
        self.store = InMemorySessionStore()
        self.gateway = ScriptedGateway(script)
        self.engine = SessionEngine(
            store=self.store,
            gateway=self.gateway,
            tools=builtin_tools(),
            settings=settings or EngineSettings(retry_backoff_seconds=0.0),
        )

    def events(self, session: str = "sessions/s1") -> list[events_pb2.SessionEvent]:
        return self.store.events[(TENANT, session)]

    def kinds(self, session: str = "sessions/s1") -> list[str]:
        return [str(e.WhichOneof("payload")) for e in self.events(session)]


@pytest.fixture
def harness_factory() -> Callable[..., Harness]:
    return Harness


# -- the in-process API mesh (api_mesh.py) over SQLite and PostgreSQL ---------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = postgres_server()
    except PostgresUnavailable as error:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL is required for these tests: {error}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    with fresh_database(postgres, prefix="agentmesh_orch") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('orch') / 'memory.db'}"


@pytest.fixture
async def mesh(database_url: str) -> AsyncIterator[Mesh]:
    started, shutdown = await start_mesh(database_url, echo_script)
    try:
        yield started
    finally:
        await shutdown()
