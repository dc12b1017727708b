"""The whole mesh as separate processes: orchestrator, gateway, runner and memory.

Sessions run through the real gateway to a scripted provider speaking OpenAI's wire format,
and through the local runner's tiny model; a replica killed with SIGKILL mid-session is
replaced by another that resumes from the last persisted step without repeating model calls.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentmesh.common.v1 import (
    agents_pb2,
    approvals_pb2,
    events_pb2,
    generation_pb2,
    sessions_pb2,
)
from agentmesh_cli.mesh import GATEWAY, ORCHESTRATOR, ServiceProcess

from .conftest import (
    ORCHESTRATOR_ENV,
    Answer,
    Chat,
    Mesh,
    last_user,
    start_e2e_mesh,
    stop_e2e_mesh,
    system_of,
)

pytestmark = pytest.mark.slow
TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


def member(agent_id: str, route: str = "default", **prompts: str) -> agents_pb2.AgentDefinition:
    return agents_pb2.AgentDefinition(
        name=agent_id,
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        model=agents_pb2.ModelSelection(route=route),
        prompts=agents_pb2.AgentPrompts(system=f"You are {agent_id}.", **prompts),
        generation=generation_pb2.GenerationConfig(max_tokens=24),
    )


def kinds(events: list[events_pb2.SessionEvent]) -> list[str]:
    return [str(e.WhichOneof("payload")) for e in events]


async def collect(stream: Any) -> list[events_pb2.SessionEvent]:
    return [event async for event in stream]


def by_speaker(chat: Chat) -> Answer:
    who = re.search(r"You are (\w+)", system_of(chat))
    return Answer(text=f"{who.group(1) if who else 'someone'} agrees with the plan")


async def test_round_robin_through_the_real_gateway(mesh_factory: Any) -> None:
    mesh: Mesh = await mesh_factory(by_speaker)
    async with mesh.client() as client:
        session = await client.create_session(
            goal="Agree on a plan",
            inline_agents=[member("alice"), member("bob")],
            limits=sessions_pb2.SessionLimits(max_rounds=2),
        )
        events = await collect(client.run(session.name))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events)[-1] == "session_completed"
    completed = [e.message_completed for e in events if e.HasField("message_completed")]
    assert [c.message.content for c in completed] == [
        "alice agrees with the plan",
        "bob agrees with the plan",
    ] * 2
    assert all(c.provider == "openai_compatible" for c in completed)
    usage = events[-1].session_completed.usage
    assert usage.total_tokens == sum(c.usage.total_tokens for c in completed)
    assert usage.cost_micros_usd > 0, "priced by the routes file"
    assert not usage.estimated, "the provider reported usage"
    assert len(mesh.provider.requests) == 4


async def test_planner_executor_with_tools_through_the_real_gateway(mesh_factory: Any) -> None:
    plan = {
        "rationale": "compute, then explain",
        "tasks": [
            {"id": "sum", "description": "Compute 17 * 23 with the calculator"},
            {"id": "explain", "description": "Explain the result", "depends_on": ["sum"]},
        ],
    }

    def script(chat: Chat) -> Answer:
        system = system_of(chat)
        if "You are a planner" in system:
            return Answer(text=json.dumps(plan))
        if "You are a writer" in system:
            return Answer(text="The product is 391.")
        if "Compute 17 * 23" in last_user(chat):
            if not any(m["role"] == "tool" for m in chat["messages"]):
                return Answer(tool_calls=[("calculator", {"expression": "17 * 23"})])
            return Answer(text="391")
        return Answer(text="It is seventeen times twenty-three.")

    mesh: Mesh = await mesh_factory(script)
    executor = agents_pb2.AgentDefinition(
        name="worker",
        type=agents_pb2.AGENT_TYPE_EXECUTOR,
        model=agents_pb2.ModelSelection(route="default"),
        tools=["calculator", "session_notes_write"],
    )
    async with mesh.client() as client:
        session = await client.create_session(
            goal="What is 17 * 23?",
            inline_agents=[executor],
            strategy=sessions_pb2.STRATEGY_PLANNER_EXECUTOR,
        )
        events = await collect(client.run(session.name))
        details = await client.get_session(session.name)
    assert kinds(events)[-1] == "session_completed", events[-1]
    assert events[-1].session_completed.final_answer == "The product is 391."
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.result.fields["value"].number_value == 391.0
    worker_calls = [c for c in mesh.provider.requests if "Compute 17 * 23" in last_user(c)]
    offered = {t["function"]["name"] for t in worker_calls[0].get("tools", [])}
    assert offered == {"calculator"}, "executors in a plan get READ_ONLY tools only"
    assert [t.status for t in details.tasks] == [sessions_pb2.TASK_STATUS_COMPLETED] * 2


async def test_a_session_on_the_tiny_local_model(mesh_factory: Any) -> None:
    mesh: Mesh = await mesh_factory(by_speaker)
    async with mesh.client() as client:
        session = await client.create_session(
            goal="Say something",
            inline_agents=[member("tiny-talker", route="tiny")],
            limits=sessions_pb2.SessionLimits(max_rounds=1),
        )
        events = await collect(client.run(session.name))
    assert kinds(events)[-1] == "session_completed", events[-1]
    completed = next(e.message_completed for e in events if e.HasField("message_completed"))
    assert completed.provider == "local"
    assert 0 < completed.usage.completion_tokens <= 24
    assert not completed.usage.estimated, "the runner counts tokens exactly"
    streamed = "".join(e.content_delta.text for e in events if e.HasField("content_delta"))
    assert streamed == completed.message.content
    assert mesh.provider.requests == [], "nothing went to the scripted provider"


async def test_a_killed_replica_is_replaced_without_repeating_model_calls(
    mesh_factory: Any,
) -> None:
    def slow(chat: Chat) -> Answer:
        speaker = re.search(r"You are (\w+)", system_of(chat))
        return Answer(text=f"{speaker.group(1) if speaker else '?'} speaks", delay_seconds=0.6)

    mesh: Mesh = await mesh_factory(slow)
    replica_b = ServiceProcess(
        ORCHESTRATOR,
        {
            **ORCHESTRATOR_ENV,
            "AGENTMESH_ORCHESTRATOR_PORT": "0",
            "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": mesh.services["memory"].address,
            "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services["inference-gateway"].address,
            "AGENTMESH_ORCHESTRATOR_REPLICA_ID": "replica-b",
        },
        log_path=mesh.data_dir / "logs" / "orchestrator-b.log",
    )
    await replica_b.start()
    try:
        async with mesh.client() as client_a, mesh.client(replica_b) as client_b:
            session = await client_a.create_session(
                goal="Take turns",
                inline_agents=[
                    member("alice", user_template="Round {round}: {goal}"),
                    member("bob", user_template="Round {round}: {goal}"),
                ],
                limits=sessions_pb2.SessionLimits(max_rounds=3),
            )
            seen: list[events_pb2.SessionEvent] = []
            async for event in client_a.run(session.name):
                seen.append(event)
                if kinds(seen).count("message_completed") == 2:
                    break
            done_before_kill = {
                (e.agent, _round_of(seen, e)) for e in seen if e.HasField("message_completed")
            }
            assert mesh.orchestrator.process is not None
            mesh.orchestrator.process.send_signal(signal.SIGKILL)
            await mesh.orchestrator.process.wait()

            rest = await asyncio.wait_for(
                collect(client_b.events(session.name, after_seq=seen[-1].seq)), 60
            )
            details = await client_b.get_session(session.name)
    finally:
        await replica_b.stop()

    every = seen + rest
    assert [e.seq for e in every] == list(range(1, len(every) + 1)), "no gap, no duplicate"
    assert kinds(rest)[-1] == "session_completed"
    resumed = [e.session_started for e in rest if e.HasField("session_started")]
    assert resumed
    assert resumed[0].resumed
    assert details.session.lease_owner in ("", "replica-b")
    assert details.session.rounds_completed == 3
    calls = Counter(
        (re.search(r"You are (\w+)", system_of(c)).group(1), last_user(c).split(":")[0])  # type: ignore[union-attr]
        for c in mesh.provider.requests
    )
    for agent, round_number in done_before_kill:
        key = (agent.rsplit("/", 1)[-1], f"Round {round_number}")
        assert calls[key] == 1, f"{key} was answered before the kill and must not be repeated"
    assert len(calls) == 6, "every (agent, round) was answered"


async def test_a_replica_stopped_with_sigterm_finishes_its_turn_and_hands_the_session_on(
    mesh_factory: Any,
) -> None:
    """SIGTERM drains replica A (issue 16, finding 11): the turn in flight finishes and is
    stored, no new one starts there, and A releases the lease at once, so replica B takes the
    session over and no model call is made twice, the one in flight at SIGTERM included."""

    def slow(chat: Chat) -> Answer:
        speaker = re.search(r"You are (\w+)", system_of(chat))
        return Answer(text=f"{speaker.group(1) if speaker else '?'} speaks", delay_seconds=1.0)

    mesh: Mesh = await mesh_factory(slow)
    replica_b = ServiceProcess(
        ORCHESTRATOR,
        {
            **ORCHESTRATOR_ENV,
            "AGENTMESH_ORCHESTRATOR_PORT": "0",
            "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": mesh.services["memory"].address,
            "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services["inference-gateway"].address,
            "AGENTMESH_ORCHESTRATOR_REPLICA_ID": "replica-b",
        },
        log_path=mesh.data_dir / "logs" / "orchestrator-b.log",
    )
    await replica_b.start()
    try:
        async with mesh.client() as client_a, mesh.client(replica_b) as client_b:
            session = await client_a.create_session(
                goal="Take turns",
                inline_agents=[
                    member("alice", user_template="Round {round}: {goal}"),
                    member("bob", user_template="Round {round}: {goal}"),
                ],
                limits=sessions_pb2.SessionLimits(max_rounds=3),
            )
            seen: list[events_pb2.SessionEvent] = []
            async for event in client_a.run(session.name):
                seen.append(event)
                if kinds(seen).count("message_started") == 3:
                    break  # the third turn's model call is under way
            exit_code = await mesh.orchestrator.stop()  # SIGTERM
            rest = await asyncio.wait_for(
                collect(client_b.events(session.name, after_seq=seen[-1].seq)), 60
            )
    finally:
        await replica_b.stop()

    assert exit_code == 0
    every = seen + rest
    assert [e.seq for e in every] == list(range(1, len(every) + 1)), "no gap, no duplicate"
    # (message_completed of a reused turn may repeat until issue 16's finding 1 is fixed.)
    assert kinds(rest)[-1] == "session_completed"
    resumed = [e.session_started for e in rest if e.HasField("session_started")]
    assert resumed
    assert resumed[0].resumed
    calls = Counter(
        (re.search(r"You are (\w+)", system_of(c)).group(1), last_user(c).split(":")[0])  # type: ignore[union-attr]
        for c in mesh.provider.requests
    )
    assert set(calls.values()) == {1}, f"a model call was made twice: {calls}"
    assert len(calls) == 6, "every (agent, round) was answered"


def _round_of(events: list[events_pb2.SessionEvent], completed: events_pb2.SessionEvent) -> int:
    started = next(
        e.message_started
        for e in events
        if e.HasField("message_started") and e.message_id == completed.message_id
    )
    return started.round


async def test_the_router_on_the_tiny_model_answers_directly(mesh_factory: Any) -> None:
    """A short question needs no analysis by the model (the tiny one's text is meaningless
    anyway): one agent on the local runner answers it directly."""
    mesh: Mesh = await mesh_factory(by_speaker)
    async with mesh.client() as client:
        session = await client.create_session(
            goal="Could you say hello?",
            inline_agents=[member("tiny-talker", route="tiny")],
            strategy=sessions_pb2.STRATEGY_ROUTER,
        )
        events = await collect(client.run(session.name))
    assert kinds(events)[-1] == "session_completed", events[-1]
    analysis = next(e.analysis for e in events if e.HasField("analysis"))
    assert analysis.kind == events_pb2.GOAL_KIND_SIMPLE
    assert analysis.reason.startswith("one short question")
    completed = [e.message_completed for e in events if e.HasField("message_completed")]
    assert [c.provider for c in completed] == ["local"], "one turn: the answer"
    assert mesh.provider.requests == [], "everything ran on the local runner"


async def test_an_approval_asked_by_a_killed_replica_is_answered_on_another(
    mesh_factory: Any,
) -> None:
    """Replica A asks for an approval and is killed with SIGKILL while the session waits; the
    approval is given through replica B, which takes the session over: the call runs once,
    the model call that asked is not repeated, and the story has no gap."""

    def script(chat: Chat) -> Answer:
        tool = next((m for m in chat["messages"] if m["role"] == "tool"), None)
        if tool is None:
            return Answer(tool_calls=[("memory_write", {"key": "budget", "value": 120})])
        return Answer(text=f"stored: {tool['content']}")

    mesh: Mesh = await mesh_factory(script)
    replica_b = ServiceProcess(
        ORCHESTRATOR,
        {
            **ORCHESTRATOR_ENV,
            "AGENTMESH_ORCHESTRATOR_PORT": "0",
            "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": mesh.services["memory"].address,
            "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services["inference-gateway"].address,
            "AGENTMESH_ORCHESTRATOR_REPLICA_ID": "replica-b",
        },
        log_path=mesh.data_dir / "logs" / "orchestrator-b.log",
    )
    await replica_b.start()
    keeper = member("keeper")
    keeper.tools.append("memory_write")
    keeper.tool_approval = agents_pb2.TOOL_APPROVAL_READ_WRITE
    try:
        async with mesh.client() as client_a, mesh.client(replica_b) as client_b:
            await client_a.create_agent("keeper", keeper)  # memory needs a stored agent
            session = await client_a.create_session(
                goal="Remember the budget",
                agents=["agents/keeper"],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            seen: list[events_pb2.SessionEvent] = []
            async for event in client_a.run(session.name):
                seen.append(event)
                if event.HasField("approval_requested"):
                    break
            approval = seen[-1].approval_requested.approval
            assert mesh.orchestrator.process is not None
            mesh.orchestrator.process.send_signal(signal.SIGKILL)
            await mesh.orchestrator.process.wait()

            answered = await client_b.approve_tool_call(session.name, approval.approval_id)
            assert answered.state == approvals_pb2.APPROVAL_STATE_APPROVED
            rest = await asyncio.wait_for(
                collect(client_b.events(session.name, after_seq=seen[-1].seq)), 60
            )
            stored = await client_b.get_memory("agents/keeper/users/default/memories/budget")
    finally:
        await replica_b.stop()

    every = seen + rest
    assert [e.seq for e in every] == list(range(1, len(every) + 1)), "no gap, no duplicate"
    assert kinds(every).count("approval_requested") == 1, "the new owner does not ask again"
    assert kinds(rest)[-1] == "session_completed", rest[-1]
    assert any(e.HasField("session_started") and e.session_started.resumed for e in rest)
    assert stored.value.number_value == 120, "the approved call ran"
    assert kinds(every).count("tool_result") == 1, "once"
    assert len(mesh.provider.requests) == 2, "the call that asked was not repeated"
    assert rest[-1].session_completed.final_answer == 'stored: {"stored":"budget"}'


def _second_replica(mesh: Mesh) -> ServiceProcess:
    return ServiceProcess(
        ORCHESTRATOR,
        {
            **ORCHESTRATOR_ENV,
            "AGENTMESH_ORCHESTRATOR_PORT": "0",
            "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": mesh.services["memory"].address,
            "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services["inference-gateway"].address,
            "AGENTMESH_ORCHESTRATOR_REPLICA_ID": "replica-b",
        },
        log_path=mesh.data_dir / "logs" / "orchestrator-b.log",
    )


def _assert_each_message_completes_once(events: list[events_pb2.SessionEvent]) -> None:
    """Gapless seq; every completion once, after its own start; one terminal event, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
    started: set[str] = set()
    completed: list[str] = []
    for event in events:
        if event.HasField("message_started"):
            started.add(event.message_id)
        elif event.HasField("message_completed"):
            assert event.message_id in started, f"{event.message_id} completed, never started"
            completed.append(event.message_id)
    assert len(completed) == len(set(completed)), "a message completed twice"
    assert sum(kind in TERMINAL for kind in kinds(events)) == 1
    assert kinds(events)[-1] in TERMINAL


async def test_a_replica_killed_in_a_rounds_second_turn_completes_no_message_twice(
    mesh_factory: Any,
) -> None:
    """Issue 16, finding 1: replica A is killed with SIGKILL while bob speaks in round 2,
    after alice's round-2 turn was stored. Replica B takes over: alice's answer comes from
    the ledger and its message_completed is not emitted again."""

    def slow(chat: Chat) -> Answer:
        speaker = re.search(r"You are (\w+)", system_of(chat))
        return Answer(text=f"{speaker.group(1) if speaker else '?'} speaks", delay_seconds=0.6)

    mesh: Mesh = await mesh_factory(slow)
    replica_b = _second_replica(mesh)
    await replica_b.start()
    try:
        async with mesh.client() as client_a, mesh.client(replica_b) as client_b:
            session = await client_a.create_session(
                goal="Take turns",
                inline_agents=[
                    member("alice", user_template="Round {round}: {goal}"),
                    member("bob", user_template="Round {round}: {goal}"),
                ],
                limits=sessions_pb2.SessionLimits(max_rounds=2),
            )
            seen: list[events_pb2.SessionEvent] = []
            async for event in client_a.run(session.name):
                seen.append(event)
                if kinds(seen).count("message_completed") == 3:  # round 2, alice
                    break
            assert mesh.orchestrator.process is not None
            mesh.orchestrator.process.send_signal(signal.SIGKILL)
            await mesh.orchestrator.process.wait()
            rest = await asyncio.wait_for(
                collect(client_b.events(session.name, after_seq=seen[-1].seq)), 60
            )
    finally:
        await replica_b.stop()

    every = seen + rest
    _assert_each_message_completes_once(every)
    assert kinds(rest)[-1] == "session_completed"
    spoken = [
        (e.agent.rsplit("/", 1)[-1], _round_of(every, e))
        for e in every
        if e.HasField("message_completed")
    ]
    assert spoken == [("alice", 1), ("bob", 1), ("alice", 2), ("bob", 2)]
    calls = Counter(
        (re.search(r"You are (\w+)", system_of(c)).group(1), last_user(c).split(":")[0])  # type: ignore[union-attr]
        for c in mesh.provider.requests
    )
    assert calls[("alice", "Round 2")] == 1, "alice's stored answer was not bought again"


async def test_a_session_goes_on_when_the_gateway_is_killed_and_restarted(
    tmp_path: Path,
) -> None:
    """Issue 16, finding 5: the gateway is killed with SIGKILL while bob's call streams and
    started again on the same port 3 s later; the call is made again and the session
    completes (it failed with a raw transport string before)."""

    def slow(chat: Chat) -> Answer:
        speaker = re.search(r"You are (\w+)", system_of(chat))
        return Answer(text=f"{speaker.group(1) if speaker else '?'} speaks", delay_seconds=1.0)

    mesh = await start_e2e_mesh(
        tmp_path,
        slow,
        runner=False,
        # A loaded machine can take long to start the gateway again.
        orchestrator={"AGENTMESH_ORCHESTRATOR_GATEWAY_UNAVAILABLE_SECONDS": "120"},
    )
    gateway = mesh.services["inference-gateway"]
    restarted = ServiceProcess(GATEWAY, gateway.env, log_path=tmp_path / "logs" / "gateway-2.log")
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Take turns",
                inline_agents=[member("alice"), member("bob")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events: list[events_pb2.SessionEvent] = []
            async for event in client.run(session.name):
                events.append(event)
                if kinds(events).count("message_completed") == 1 and restarted.process is None:
                    assert gateway.process is not None
                    gateway.process.send_signal(signal.SIGKILL)
                    await gateway.process.wait()
                    await asyncio.sleep(3.0)  # down for a while, as in the fault run
                    await restarted.start()
    finally:
        await stop_e2e_mesh(mesh, [restarted])

    assert restarted.port == gateway.port
    _assert_each_message_completes_once(events)
    assert kinds(events)[-1] == "session_completed", events[-1]
    spoken = [e.agent.rsplit("/", 1)[-1] for e in events if e.HasField("message_completed")]
    assert spoken == ["alice", "bob"]
