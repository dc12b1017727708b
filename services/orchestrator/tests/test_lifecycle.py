"""A replica's shutdown (issue 16, finding 11): running → draining → stopped.

The `SessionManager` runs over a real memory service (SQLite) with a scripted model. Draining
refuses new runs with UNAVAILABLE (REPLICA_DRAINING), stops each session at its next turn
boundary (the turn in flight finishes and is stored; the next model call is not made),
abandons what is still in a turn when the grace period ends, hands every lease back, and
leaves no task of the manager pending.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentmesh.common.v1 import agents_pb2, events_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh_common import AgentmeshError, Unavailable, create_channel, from_rpc_error
from agentmesh_memory.testing import RunningMemory, memory_settings, start_memory
from agentmesh_orchestrator.adapters.memory_client import MemoryClient
from agentmesh_orchestrator.admission import Admission, AdmissionSettings
from agentmesh_orchestrator.agents import resolve_agents
from agentmesh_orchestrator.engine import EngineSettings, SessionEngine
from agentmesh_orchestrator.lifecycle import ReplicaState
from agentmesh_orchestrator.sessions import LeaseSettings, SessionManager
from agentmesh_orchestrator.testing import Reply, ScriptedGateway
from agentmesh_orchestrator.tools import builtin_tools

from .api_mesh import agent, start_mesh

TENANT = "acme"
TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[MemoryClient]:
    running: RunningMemory = await start_memory(
        memory_settings(f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}", migrate_on_start="true")
    )
    channel = create_channel(running.address, tracer_provider=TracerProvider())
    try:
        yield MemoryClient(channel)
    finally:
        await channel.close(None)
        await running.stop()


def replica(
    memory: MemoryClient, script: Callable[[inference_pb2.GenerateRequest], Reply], **bounds: int
) -> tuple[SessionManager, ScriptedGateway]:
    gateway = ScriptedGateway(script)
    engine = SessionEngine(
        store=memory,
        gateway=gateway,
        tools=builtin_tools(),
        settings=EngineSettings(retry_backoff_seconds=0.0),
    )
    manager = SessionManager(
        engine=engine,
        store=memory,
        resolve_agents=resolve_agents,
        lease=LeaseSettings(ttl_seconds=30),
        admission=Admission(AdmissionSettings(**bounds)),  # type: ignore[arg-type]
    )
    return manager, gateway


async def new_session(memory: MemoryClient, rounds: int = 3) -> str:
    session = sessions_pb2.Session(
        goal="Talk it over",
        strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
        inline_agents=[
            agents_pb2.AgentDefinition(
                name="agents/alice",
                type=agents_pb2.AGENT_TYPE_CUSTOM,
                model=agents_pb2.ModelSelection(route="default"),
                prompts=agents_pb2.AgentPrompts(system="Alice. Be brief."),
            )
        ],
        limits=sessions_pb2.SessionLimits(max_rounds=rounds),
    )
    session.agents.append("agents/alice")
    reply = await memory.call(
        TENANT,
        memory.stub.CreateSession,
        memory_pb2.CreateSessionRequest(session=session, request_id=uuid.uuid4().hex),
    )
    return reply.session.name


class Follower:
    """Consumes `manager.run` in a task, keeping the events and how the stream ended."""

    def __init__(self, manager: SessionManager, name: str) -> None:
        self.events: list[events_pb2.SessionEvent] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._follow(manager, name))

    async def _follow(self, manager: SessionManager, name: str) -> None:
        try:
            async for event in manager.run(TENANT, name):
                self.events.append(event)
        except AgentmeshError as error:
            self.error = error

    @property
    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("payload")) for e in self.events]


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_draining_lets_the_turn_in_flight_finish_and_starts_no_other(
    memory: MemoryClient,
) -> None:
    manager, gateway = replica(memory, lambda _: Reply(text="alice agrees", delay_seconds=1.0))
    name = await new_session(memory, rounds=3)
    follower = Follower(manager, name)
    await until(lambda: len(gateway.requests) == 1)  # the first turn's model call is under way

    await asyncio.wait_for(manager.drain(grace_seconds=30), 20)

    assert manager.state is ReplicaState.STOPPED
    assert len(gateway.requests) == 1, "a turn was started while draining"
    await asyncio.wait_for(follower.task, 5)
    # The turn that was in flight completed and was stored; the session did not end here.
    assert follower.kinds.count("message_completed") == 1
    assert not TERMINAL & set(follower.kinds)
    assert isinstance(follower.error, Unavailable)
    assert follower.error.reason == "REPLICA_DRAINING"
    stored = await memory.get_session(TENANT, name)
    assert stored.status == sessions_pb2.SESSION_STATUS_RUNNING
    assert stored.lease_owner == "", "the lease was kept: no other replica could take over"
    stored_kinds = [
        str(e.WhichOneof("payload")) async for e in _log(memory, name, stored.last_event_seq)
    ]
    assert stored_kinds.count("message_completed") == 1


async def test_draining_refuses_new_runs_with_a_reason_the_client_retries_on(
    memory: MemoryClient,
) -> None:
    manager, gateway = replica(memory, lambda _: Reply(text="slow", delay_seconds=60))
    busy, other = await new_session(memory), await new_session(memory)
    follower = Follower(manager, busy)
    await until(lambda: len(gateway.requests) == 1)

    draining = asyncio.create_task(manager.drain(grace_seconds=0.5))
    await until(lambda: manager.state is not ReplicaState.RUNNING)
    with pytest.raises(Unavailable) as refused:
        async for _ in manager.run(TENANT, other):
            pass
    assert refused.value.reason == "REPLICA_DRAINING"
    assert refused.value.retry_after is not None
    await asyncio.wait_for(draining, 20)
    await asyncio.wait_for(follower.task, 5)
    untouched = await memory.get_session(TENANT, other)
    assert untouched.status == sessions_pb2.SESSION_STATUS_PENDING
    assert untouched.lease_owner == ""
    assert len(gateway.requests) == 1


async def test_a_turn_longer_than_the_grace_period_is_abandoned_and_its_lease_handed_back(
    memory: MemoryClient,
) -> None:
    manager, gateway = replica(memory, lambda _: Reply(text="slow", delay_seconds=60))
    name = await new_session(memory)
    follower = Follower(manager, name)
    await until(lambda: len(gateway.requests) == 1)

    started = time.monotonic()
    await asyncio.wait_for(manager.drain(grace_seconds=0.3), 20)
    assert time.monotonic() - started < 15  # the 60 s turn was not waited for

    await asyncio.wait_for(follower.task, 5)
    assert "message_completed" not in follower.kinds
    assert not TERMINAL & set(follower.kinds)
    assert isinstance(follower.error, Unavailable)
    stored = await memory.get_session(TENANT, name)
    assert stored.status == sessions_pb2.SESSION_STATUS_RUNNING  # another replica goes on
    assert stored.lease_owner == ""


async def test_no_task_of_the_manager_is_left_pending_after_shutdown(
    memory: MemoryClient,
) -> None:
    manager, gateway = replica(memory, lambda _: Reply(text="hi", delay_seconds=0.5))
    looked = asyncio.Event()

    async def find() -> list[tuple[str, sessions_pb2.Session]]:
        looked.set()
        return []

    manager.start_takeover(find, interval_seconds=0.05)
    finished = Follower(manager, await new_session(memory, rounds=1))
    await asyncio.wait_for(finished.task, 20)
    assert "session_completed" in finished.kinds
    slow = Follower(manager, await new_session(memory))
    await until(lambda: len(gateway.requests) == 2)
    await asyncio.wait_for(looked.wait(), 10)

    await asyncio.wait_for(manager.shutdown(0.1), 20)
    await manager.shutdown(0.1)  # safe to repeat

    assert manager.pending_tasks == []
    leftovers = [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and getattr(task.get_coro(), "__qualname__", "").startswith("SessionManager.")
    ]
    assert leftovers == [], f"tasks of the manager still pending: {leftovers}"
    await asyncio.wait_for(slow.task, 5)


async def test_a_full_replica_takes_over_only_what_it_has_room_for(
    memory: MemoryClient,
) -> None:
    manager, _ = replica(
        memory,
        lambda _: Reply(text="slow", delay_seconds=60),
        max_running_sessions=1,
        max_queued_sessions=0,
    )
    orphans = [await memory.get_session(TENANT, await new_session(memory)) for _ in range(3)]

    resumed = await manager.resume_expired([(TENANT, s) for s in orphans])

    assert resumed == 1
    assert manager.active_count == 1
    left = [await memory.get_session(TENANT, s.name) for s in orphans[1:]]
    assert [s.lease_owner for s in left] == ["", ""], "a session it has no room for was leased"
    await asyncio.wait_for(manager.shutdown(0.1), 20)


async def _log(
    memory: MemoryClient, name: str, last_seq: int
) -> AsyncIterator[events_pb2.SessionEvent]:
    async for event in memory.watch_events(TENANT, name, 0):
        yield event
        if event.seq >= last_seq:
            return


async def test_stopping_the_server_drains_sessions_instead_of_cancelling_them(
    tmp_path: Path,
) -> None:
    """The path SIGTERM takes (`serve` sees its stop event): an Execute in a turn (cancel on
    disconnect, the default) is not cancelled by the shutdown; its turn completes and is
    stored, its stream ends UNAVAILABLE (REPLICA_DRAINING), and the session is left RUNNING
    with its lease released for another replica."""
    mesh, shutdown = await start_mesh(
        f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}",
        lambda _: Reply(text="alice agrees", delay_seconds=1.0),
        grace_seconds="10",
        drain_grace_seconds="5",
    )
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.orchestrator.port}")
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        call = stub.Execute(
            orchestrator_pb2.ExecuteRequest(
                task="Talk it over",
                inline_agents=[agent("alice"), agent("bob")],
                strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
                limits=sessions_pb2.SessionLimits(max_rounds=3),
            ),
            metadata=(("authorization", f"Bearer {mesh.keys['acme']}"),),
        )
        kinds: list[str] = []
        name = ""
        async for reply in call:
            name = name or reply.event.session
            kinds.append(str(reply.event.WhichOneof("payload")))
            if kinds[-1] == "message_started":
                break  # the first turn's model call is under way
        stopping = asyncio.create_task(mesh.stop_orchestrator())
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await _read_rest(call, kinds)
        await asyncio.wait_for(stopping, 30)
        await channel.close(None)

        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert from_rpc_error(ended.value).reason == "REPLICA_DRAINING"
        assert kinds.count("message_completed") == 1
        assert not TERMINAL & set(kinds)
        memory_channel = create_channel(mesh.memory.address, tracer_provider=TracerProvider())
        try:  # left for another replica to take over: RUNNING, its lease released
            orphans = {s.name: s for _, s in await MemoryClient(memory_channel).list_orphaned()}
        finally:
            await memory_channel.close(None)
        assert name in orphans, "the session was ended (or kept leased) by the shutdown"
        assert orphans[name].status == sessions_pb2.SESSION_STATUS_RUNNING
        assert orphans[name].lease_owner == ""
        assert len(mesh.gateway.requests) == 1
    finally:
        await shutdown()


async def _read_rest(
    call: AsyncIterator[orchestrator_pb2.ExecuteResponse], kinds: list[str]
) -> None:
    async for reply in call:
        kinds.append(str(reply.event.WhichOneof("payload")))


class FlakyLeases:
    """The memory client, but the first `failures` lease renewals fail as if the memory service
    were down for a moment (UNAVAILABLE)."""

    def __init__(self, memory: MemoryClient, failures: int) -> None:
        self._memory = memory
        self.failures = failures
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    async def renew_lease(self, tenant: str, session: str, owner: str, ttl: float) -> Any:
        if self.failed < self.failures:
            self.failed += 1
            raise Unavailable("memory service restarting")
        return await self._memory.renew_lease(tenant, session, owner, ttl)


async def test_a_renewal_failing_for_less_than_the_lease_does_not_stop_the_run(
    memory: MemoryClient,
) -> None:
    flaky = FlakyLeases(memory, failures=2)
    gateway = ScriptedGateway(lambda _: Reply(text="still here", delay_seconds=0.8))
    engine = SessionEngine(
        store=flaky,  # type: ignore[arg-type]
        gateway=gateway,
        tools=builtin_tools(),
        settings=EngineSettings(retry_backoff_seconds=0.0),
    )
    manager = SessionManager(
        engine=engine,
        store=flaky,  # type: ignore[arg-type]
        resolve_agents=resolve_agents,
        lease=LeaseSettings(ttl_seconds=3),
        admission=Admission(AdmissionSettings()),
    )
    name = await new_session(memory, rounds=5)
    follower = Follower(manager, name)
    try:
        await asyncio.wait_for(follower.task, 60)
    finally:
        await manager.shutdown()
    assert flaky.failed == 2, "the renewals did fail"
    assert follower.error is None
    assert follower.kinds[-1] == "session_completed", follower.kinds[-3:]
