"""Admission control (issue 16, finding 7): over its bounds a replica refuses work with
RESOURCE_EXHAUSTED and a RetryInfo delay before the work starts, instead of letting every call
slow down until deadlines expire inside it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentmesh.common.v1 import sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_client.client import AgentmeshClient
from agentmesh_common import ResourceExhausted
from agentmesh_orchestrator.admission import Gate
from agentmesh_orchestrator.testing import Reply

from .api_mesh import Mesh, agent, start_mesh

TURN_SECONDS = 3.0


def slow_script(request: inference_pb2.GenerateRequest) -> Reply:
    return Reply(text="done", delay_seconds=TURN_SECONDS)


@pytest.fixture
async def small_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh, shutdown = await start_mesh(
        f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}",
        slow_script,
        max_running_sessions="2",
        max_queued_sessions="0",
        admission_retry_after_seconds="0.5",
    )
    try:
        yield mesh
    finally:
        await shutdown()


async def one_turn_session(client: AgentmeshClient) -> str:
    session = await client.create_session(
        goal="Say done",
        inline_agents=[agent("alice")],
        strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=1),
    )
    return session.name


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_runs_over_the_bound_are_refused_at_once_and_admitted_once_there_is_room(
    small_mesh: Mesh,
) -> None:
    async with small_mesh.client() as client:
        names = [await one_turn_session(client) for _ in range(4)]
        outcomes: dict[str, tuple[str | ResourceExhausted, float]] = {}

        async def run(name: str) -> None:
            try:
                last = ""
                async for event in client.run(name):
                    last = str(event.WhichOneof("payload"))
                outcomes[name] = (last, time.monotonic())
            except ResourceExhausted as refused:
                outcomes[name] = (refused, time.monotonic())

        runs = [asyncio.create_task(run(name)) for name in names]

        def refusals() -> int:
            return sum(isinstance(o, ResourceExhausted) for o, _ in outcomes.values())

        await until(lambda: refusals() == 2)
        # Refused while the admitted ones are still in their (3 s) turn: before any work.
        assert not any(isinstance(o, str) for o, _ in outcomes.values())
        refused_names = [n for n, (o, _) in outcomes.items() if isinstance(o, ResourceExhausted)]
        for name in refused_names:
            error = outcomes[name][0]
            assert isinstance(error, ResourceExhausted)
            assert error.reason == "REPLICA_AT_CAPACITY"
            assert error.retry_after is not None
            assert 0 < error.retry_after <= 1.0
        assert len(small_mesh.gateway.requests) <= 2
        refused_sessions = small_mesh.telemetry.registry.get_sample_value(
            "agentmesh_orchestrator_admission_refused_total", {"limit": "sessions"}
        )
        assert refused_sessions == 2

        # An Execute is refused the same way, and before it stores a session.
        before = len([s async for s in client.list_sessions()])
        with pytest.raises(ResourceExhausted) as refused_execute:
            async for _ in client.execute("Say done", inline_agents=[agent("bob")]):
                pass
        assert refused_execute.value.reason == "REPLICA_AT_CAPACITY"
        assert len([s async for s in client.list_sessions()]) == before

        await asyncio.wait_for(asyncio.gather(*runs), 60)
        admitted = [n for n in names if n not in refused_names]
        assert [outcomes[n][0] for n in admitted] == ["session_completed"] * 2

        # There is room again: the refused ones run to their end now (a client honouring
        # RetryInfo may need another try while the finished runs hand their places back).
        for name in refused_names:
            assert await run_with_retries(client, name) == "session_completed"


async def run_with_retries(client: AgentmeshClient, name: str, attempts: int = 5) -> str:
    for _ in range(attempts - 1):
        try:
            return [str(e.WhichOneof("payload")) async for e in client.run(name)][-1]
        except ResourceExhausted as refused:
            await asyncio.sleep(refused.retry_after or 0.5)
    return [str(e.WhichOneof("payload")) async for e in client.run(name)][-1]


async def test_a_gate_queues_up_to_its_bound_hands_slots_on_in_order_and_refuses_the_rest() -> None:
    gate = Gate("things", limit=1, queue=1, wait_seconds=5, retry_after_seconds=1, jitter=lambda: 0)
    first = await gate.acquire()
    queued = asyncio.create_task(gate.acquire())
    await until(lambda: gate.waiting == 1)
    with pytest.raises(ResourceExhausted) as refused:  # the queue is full: refused at once
        await gate.acquire()
    assert refused.value.reason == "REPLICA_AT_CAPACITY"
    assert refused.value.retry_after == 1.0
    first.release()
    first.release()  # twice is harmless
    second = await asyncio.wait_for(queued, 5)
    assert gate.held == 1
    second.release()
    assert gate.held == 0


async def test_a_queued_caller_is_refused_before_its_deadline() -> None:
    gate = Gate(
        "things", limit=1, queue=5, wait_seconds=30, retry_after_seconds=2, jitter=lambda: 1
    )
    held = await gate.acquire()
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as refused:
        await gate.acquire(time_remaining=0.75)  # the caller's deadline, not the 30 s wait
    assert time.monotonic() - started < 0.75
    assert refused.value.retry_after == 3.0  # 2 s plus the full 50 % jitter
    assert gate.waiting == 0
    held.release()
    assert gate.held == 0
    assert (await gate.acquire()) is not None
