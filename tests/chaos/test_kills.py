"""kill -9 loops mid-session: the orchestrator (a second replica takes over), the gateway and
the memory service (each restarted on its port). Every session's whole event log is read back
raw (no client-side dedup) and checked: no seq gap, no duplicate, exactly one terminal event,
no extra event; and no model call answered to the end is bought again.

Full counts (`make chaos`): 20 orchestrator kills, 5 gateway kills, 5 memory kills."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh_cli.mesh import GATEWAY, MEMORY, ORCHESTRATOR, ServiceProcess
from tests.e2e.conftest import ORCHESTRATOR_ENV, Mesh, start_e2e_mesh, stop_e2e_mesh
from tests.e2e.test_mesh import member
from tests.timing import scaled

from .support import (
    FIGURES,
    TERMINAL,
    CountingProvider,
    check_log,
    count,
    pending,
    record_log,
    restart,
    speaking,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


class Chaos:
    """One mesh (no runner) and two orchestrator replicas, shared by the module's loops."""

    def __init__(self, mesh: Mesh, provider: CountingProvider, replica_b: ServiceProcess) -> None:
        self.mesh = mesh
        self.provider = provider
        self.replicas = [mesh.orchestrator, replica_b]
        self.extra: list[ServiceProcess] = [replica_b]
        self.metadata = (("authorization", f"Bearer {mesh.api_key}"),)

    def stub(self, channel: grpc.aio.Channel) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

    async def new_replica(self, number: int) -> ServiceProcess:
        replica = ServiceProcess(ORCHESTRATOR, replica_env(self.mesh, f"replica-{number}"))
        replica.log_path = self.mesh.data_dir / "logs" / f"orchestrator-{number}.log"
        await replica.start()
        self.extra.append(replica)
        return replica

    async def create(self, channel: grpc.aio.Channel, goal: str) -> str:
        agents = [member(name, user_template="Round {round}: {goal}") for name in ("alice", "bob")]
        reply = await self.stub(channel).CreateSession(
            orchestrator_pb2.CreateSessionRequest(
                session=sessions_pb2.Session(
                    goal=goal,
                    inline_agents=agents,
                    limits=sessions_pb2.SessionLimits(max_rounds=3),
                ),
                request_id=uuid.uuid4().hex,
            ),
            metadata=self.metadata,
            timeout=scaled(20),
        )
        return str(reply.session.name)

    async def settled(self, channel: grpc.aio.Channel) -> None:
        """Wait until the replica reaches memory and the gateway again after a restart (its
        channels reconnect within a second), so each kill starts from a working mesh."""
        deadline = asyncio.get_running_loop().time() + scaled(15)
        while True:
            try:
                await self.stub(channel).ListModels(
                    orchestrator_pb2.ListModelsRequest(), metadata=self.metadata, timeout=2
                )
                await self.stub(channel).ListAgents(
                    orchestrator_pb2.ListAgentsRequest(), metadata=self.metadata, timeout=2
                )
                return
            except grpc.aio.AioRpcError:
                assert asyncio.get_running_loop().time() < deadline, "the mesh never settled"
                await asyncio.sleep(0.1)

    async def raw_log(self, address: str, session: str) -> list[events_pb2.SessionEvent]:
        """The session's whole log as StreamSession sends it, once it has ended."""
        deadline = asyncio.get_running_loop().time() + scaled(30)
        async with grpc.aio.insecure_channel(address) as channel:
            while True:
                events: list[events_pb2.SessionEvent] = []
                # A stream that never brings the terminal event ends at the deadline too.
                left = max(1.0, deadline - asyncio.get_running_loop().time())
                call = self.stub(channel).StreamSession(
                    orchestrator_pb2.StreamSessionRequest(session=session, after_seq=0),
                    metadata=self.metadata,
                    timeout=left,
                )
                try:
                    async for reply in call:
                        events.append(reply.event)
                        if reply.event.WhichOneof("payload") in TERMINAL:
                            break
                except grpc.aio.AioRpcError:
                    pass  # the service it reads from is still restarting
                finally:
                    call.cancel()
                if events and events[-1].WhichOneof("payload") in TERMINAL:
                    return events
                if asyncio.get_running_loop().time() > deadline:
                    return events
                await asyncio.sleep(0.5)


def replica_env(mesh: Mesh, replica_id: str) -> dict[str, str]:
    return {
        **ORCHESTRATOR_ENV,
        "AGENTMESH_ORCHESTRATOR_PORT": "0",
        "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": mesh.services[MEMORY.name].address,
        "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services[GATEWAY.name].address,
        "AGENTMESH_ORCHESTRATOR_REPLICA_ID": replica_id,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chaos]:
    provider = CountingProvider(speaking(0.2))
    tmp_path: Path = tmp_path_factory.mktemp("kills")
    mesh = await start_e2e_mesh(tmp_path, provider.script, runner=False, provider=provider)
    replica_b = ServiceProcess(ORCHESTRATOR, replica_env(mesh, "replica-b"))
    replica_b.log_path = tmp_path / "logs" / "orchestrator-b.log"
    try:
        await replica_b.start()
    except BaseException:
        await stop_e2e_mesh(mesh)
        raise
    state = Chaos(mesh, provider, replica_b)
    try:
        yield state
    finally:
        await stop_e2e_mesh(mesh, extra=state.extra)


async def run_until(
    chaos: Chaos, channel: grpc.aio.Channel, session: str, completions: int
) -> list[events_pb2.SessionEvent]:
    """Run the session until `completions` messages completed (then stop reading)."""
    seen: list[events_pb2.SessionEvent] = []
    call = chaos.stub(channel).Run(
        orchestrator_pb2.RunRequest(session=session, request_id=uuid.uuid4().hex),
        metadata=chaos.metadata,
    )
    try:
        async for reply in call:
            seen.append(reply.event)
            done = sum(e.HasField("message_completed") for e in seen)
            if done >= completions or reply.event.WhichOneof("payload") in TERMINAL:
                break
    finally:
        call.cancel()
    return seen


def checked(events: list[events_pb2.SessionEvent], label: str) -> int:
    """Record the log's figures; assert what holds on every branch; its extra events."""
    check = check_log(events)
    record_log(check)
    assert check.gaps == 0, f"{label}: {check.problems}"
    assert check.duplicates == 0, f"{label}: {check.problems}"
    assert check.terminal_events == 1, f"{label}: {check.terminal_events} terminal events"
    assert events[-1].HasField("session_completed"), f"{label}: {events[-1]}"
    return check.extra_events


@pytest.mark.timeout(scaled(60 + 10 * count(20)))
async def test_orchestrator_kills_with_a_second_replica_taking_over(chaos: Chaos) -> None:
    kills = count(20)
    extra = 0
    for i in range(kills):
        victim, survivor = chaos.replicas
        session = None
        async with grpc.aio.insecure_channel(victim.address) as channel:
            session = await chaos.create(channel, f"Kill {i} {uuid.uuid4().hex[:6]}")
            # Land the kill at a different turn each time (1..4 of 6), both turns of a round.
            await run_until(chaos, channel, session, completions=1 + i % 4)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        FIGURES["orchestrator kills"] += 1
        replacement = asyncio.create_task(chaos.new_replica(i))
        events = await chaos.raw_log(survivor.address, session)
        chaos.replicas = [survivor, await replacement]
        extra += checked(events, f"orchestrator kill {i}")
    repeated = chaos.provider.repeated_finished()
    FIGURES["repeated finished model calls"] += repeated
    pending(
        ("finding 1 (no extra message_completed on resume)", extra == 0, f"{extra} extra"),
        ("finding 3 (a finished call is never bought again)", repeated == 0, f"{repeated}"),
    )


async def _kill_and_restart(chaos: Chaos, which: str, kills: int) -> None:
    failed = 0
    for i in range(kills):
        address = chaos.replicas[0].address
        async with grpc.aio.insecure_channel(address) as channel:
            await chaos.settled(channel)
            goal = f"{which} kill {i} {uuid.uuid4().hex[:6]}"
            session = await chaos.create(channel, goal)
            run = asyncio.create_task(run_until(chaos, channel, session, completions=99))
            await _until(functools.partial(_streaming, chaos, goal, run))
            service = chaos.mesh.services[which]
            assert service.process is not None
            service.process.send_signal(signal.SIGKILL)
            await service.process.wait()
            await service.stop()
            FIGURES[f"{which} kills"] += 1
            again = await restart(service, f"{which}-restart-{i}.log")
            chaos.mesh.services[which] = again
            assert again.port == service.port, "restarted on its port"
            await again.wait_healthy(scaled(10))
            # The stream may break with the service; the log read below is what counts.
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await asyncio.wait_for(run, scaled(20))
        events = await chaos.raw_log(address, session)
        check = check_log(events)
        record_log(check)
        assert check.gaps == 0, f"{which} kill {i}: {check.problems}"
        assert check.duplicates == 0, f"{which} kill {i}: {check.problems}"
        if not (check.terminal_events == 1 and events[-1].HasField("session_completed")):
            failed += 1
    FIGURES[f"sessions failed after a {which} kill"] += failed
    finding = "finding 5 (a turn rides out a restarted gateway)"
    if which == MEMORY.name:
        finding = "findings 5/6 (a session rides out a restarted memory service)"
    pending((finding, failed == 0, f"{failed} of {kills} sessions did not complete"))


async def _until(condition: Callable[[], bool], within_seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(within_seconds)
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def _streaming(chaos: Chaos, goal: str, run: asyncio.Task[Any]) -> bool:
    """A turn of the session with this goal reached the provider (the run is still on)."""
    if run.done():
        raise AssertionError(f"the run ended before a turn streamed: {run.result()[-1:]}")
    return any(goal in key[0] for key in chaos.provider.started)


@pytest.mark.timeout(scaled(60 + 30 * count(5)))
async def test_gateway_kills_mid_session(chaos: Chaos) -> None:
    await _kill_and_restart(chaos, GATEWAY.name, count(5))


@pytest.mark.timeout(scaled(60 + 30 * count(5)))
async def test_memory_kills_mid_session(chaos: Chaos) -> None:
    await _kill_and_restart(chaos, MEMORY.name, count(5))
