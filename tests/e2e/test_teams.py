"""Selector and handoff teams, human approval, parallel synthesis and sub-task plans, through
the real services: memory (SQLite), the inference gateway and the orchestrator run in this
process on port 0, and the gateway calls a scripted provider speaking OpenAI's wire format.

(The kill -9 of a replica waiting for an approval is in test_mesh.py, with processes.)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2
from opentelemetry.sdk.trace import TracerProvider

from agentmesh.common.v1 import (
    agents_pb2,
    approvals_pb2,
    events_pb2,
    generation_pb2,
    sessions_pb2,
)
from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh_cli.mesh import create_api_key
from agentmesh_cli.teams import load_agents, load_session_spec
from agentmesh_client.client import AgentmeshClient
from agentmesh_common import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Registration,
    ServiceServer,
    ServiceSettings,
    Telemetry,
    load_settings,
    serve,
)
from agentmesh_gateway.app import build as build_gateway
from agentmesh_gateway.settings import GatewaySettings
from agentmesh_memory.testing import RunningMemory, memory_settings, start_memory
from agentmesh_orchestrator.app import build as build_orchestrator
from agentmesh_orchestrator.settings import OrchestratorSettings

from .conftest import Answer, Chat, ScriptedProvider, last_user, routes_file, system_of

TERMINAL = {"session_completed", "session_failed", "session_cancelled"}
Build = Callable[[AsyncExitStack, Any, Telemetry], Awaitable[Sequence[Registration]]]


async def _start(name: str, settings: ServiceSettings, build: Build) -> tuple[int, Any]:
    """Serve one service in this process; returns its port and a stopper."""
    stop = asyncio.Event()
    started: asyncio.Future[ServiceServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            name,
            settings,
            build,
            telemetry=Telemetry(service_name=name, tracer_provider=TracerProvider()),
            stop=stop,
            on_started=lambda server, _: started.set_result(server),
        )
    )
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()

    async def stopper() -> None:
        stop.set()
        await task

    return started.result().port, stopper


@dataclass
class Team:
    """The three services and the scripted provider; `script` answers each model call."""

    provider: ScriptedProvider
    memory: RunningMemory
    target: str
    api_key: str

    def client(self) -> AgentmeshClient:
        return AgentmeshClient(self.target, api_key=self.api_key, timeout=20)

    def script(self, script: Callable[[Chat], Answer]) -> None:
        self.provider.script = script
        self.provider.requests.clear()


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[Team]:
    provider = await ScriptedProvider(lambda _: Answer(text="?")).start()
    memory = await start_memory(
        memory_settings(f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}", migrate_on_start="true")
    )
    stoppers: list[Callable[[], Awaitable[None]]] = []
    try:
        gateway_port, stop_gateway = await _start(
            "inference-gateway",
            load_settings(
                GatewaySettings,
                {
                    "AGENTMESH_GATEWAY_PORT": "0",
                    "AGENTMESH_GATEWAY_METRICS_PORT": "off",
                    "AGENTMESH_GATEWAY_GRACE_SECONDS": "1",
                    "AGENTMESH_GATEWAY_ROUTES_FILE": str(
                        routes_file(tmp_path / "routes.yaml", provider.port, None)
                    ),
                },
            ),
            build_gateway,
        )
        stoppers.append(stop_gateway)
        orchestrator_port, stop_orchestrator = await _start(
            "orchestrator",
            load_settings(
                OrchestratorSettings,
                {
                    "AGENTMESH_ORCHESTRATOR_PORT": "0",
                    "AGENTMESH_ORCHESTRATOR_METRICS_PORT": "off",
                    "AGENTMESH_ORCHESTRATOR_GRACE_SECONDS": "1",
                    "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": memory.address,
                    "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": f"127.0.0.1:{gateway_port}",
                    "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
                    "AGENTMESH_ORCHESTRATOR_TOKENS_PER_MINUTE": "0",
                },
            ),
            build_orchestrator,
        )
        stoppers.insert(0, stop_orchestrator)
        key = await create_api_key(memory.address, "teams", "teams")
        yield Team(provider, memory, f"127.0.0.1:{orchestrator_port}", key)
    finally:
        for stopper in stoppers:
            await stopper()
        await memory.stop()
        await provider.stop()


def member(agent_id: str, description: str = "", **fields: Any) -> agents_pb2.AgentDefinition:
    return agents_pb2.AgentDefinition(
        name=agent_id,
        description=description,
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        model=agents_pb2.ModelSelection(route="default"),
        prompts=agents_pb2.AgentPrompts(system=f"You are {agent_id}."),
        generation=generation_pb2.GenerationConfig(max_tokens=64),
        **fields,
    )


def speaker(chat: Chat) -> str:
    found = re.search(r"You are (\w+)", system_of(chat))
    return found.group(1) if found else ""


def kinds(events: Sequence[events_pb2.SessionEvent]) -> list[str]:
    return [str(e.WhichOneof("payload")) for e in events]


async def run_all(client: AgentmeshClient, session: str) -> list[events_pb2.SessionEvent]:
    events = [event async for event in client.run(session)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "gapless, from 1"
    assert [k for k in kinds(events) if k in TERMINAL] == [kinds(events)[-1]]
    return events


def members_message(event: events_pb2.SessionEvent) -> bool:
    """A member's message (not the built-in selector's)."""
    return event.HasField("message_completed") and event.agent.startswith("agents/")


def selector_enum(chat: Chat) -> list[str]:
    """The candidates the selector was allowed to name (the response schema's enum)."""
    schema = chat["response_format"]["json_schema"]["schema"]
    return list(schema["properties"]["speaker"]["enum"])


# -- selector ----------------------------------------------------------------------------------


async def test_the_selector_picks_each_speaker_within_the_allowed_transitions(team: Team) -> None:
    picks = iter(["critic", "writer"])
    selector_calls: list[Chat] = []

    def script(chat: Chat) -> Answer:
        if "choose who speaks next" in system_of(chat):
            selector_calls.append(chat)
            return Answer(text=json.dumps({"speaker": next(picks), "reason": "their turn"}))
        return Answer(text=f"{speaker(chat)} adds a line")

    team.script(script)
    async with team.client() as client:
        session = await client.create_session(
            goal="Write a slogan",
            inline_agents=[
                member("planner", "plans the work"),
                member("writer", "writes text"),
                member("critic", "criticizes text"),
            ],
            strategy=sessions_pb2.STRATEGY_SELECTOR,
            limits=sessions_pb2.SessionLimits(max_rounds=4),
            selector=sessions_pb2.SelectorSpec(
                initial_agent="planner",
                allowed_transitions=[
                    sessions_pb2.AgentTransitions(from_agent="planner", to_agents=["writer"]),
                    sessions_pb2.AgentTransitions(
                        from_agent="writer", to_agents=["critic", "planner"]
                    ),
                ],
            ),
        )
        events = await run_all(client, session.name)
    spoken = [e.agent for e in events if members_message(e)]
    assert spoken == ["agents/planner", "agents/writer", "agents/critic", "agents/writer"]
    chosen = [e.analysis for e in events if e.HasField("analysis")]
    assert [a.selected_agent for a in chosen] == spoken
    assert chosen[0].reason == "the initial agent"
    assert chosen[1].reason == "the only allowed speaker after planner", "no model call"
    assert chosen[2].reason == "their turn"
    # After writer: critic or planner; after critic (no entry): anyone but critic itself.
    assert [selector_enum(c) for c in selector_calls] == [
        ["planner", "critic"],
        ["planner", "writer"],
    ]
    assert "writes text" in last_user(selector_calls[0]), "the roster has descriptions"
    assert events[-1].session_completed.termination_reason == "max_rounds"


async def test_an_invalid_choice_falls_back_to_round_robin_order_and_says_so(team: Team) -> None:
    def script(chat: Chat) -> Answer:
        if "choose who speaks next" in system_of(chat):
            return Answer(text=json.dumps({"speaker": "nobody", "reason": "?"}))
        return Answer(text=f"{speaker(chat)} speaks")

    team.script(script)
    async with team.client() as client:
        session = await client.create_session(
            goal="Talk",
            inline_agents=[member("ann"), member("ben"), member("cid")],
            strategy=sessions_pb2.STRATEGY_SELECTOR,
            limits=sessions_pb2.SessionLimits(max_rounds=2),
        )
        events = await run_all(client, session.name)
    spoken = [e.agent for e in events if members_message(e)]
    assert spoken == ["agents/ann", "agents/ben"], "members' order, from the start"
    fallback = next(e.analysis for e in events if e.HasField("analysis"))
    assert "round-robin order decides instead" in fallback.reason
    assert fallback.selected_agent == "agents/ann"


async def test_a_transition_to_an_unknown_agent_is_refused_naming_the_field(team: Team) -> None:
    async with team.client() as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.create_session(
                goal="Talk",
                inline_agents=[member("ann"), member("ben")],
                strategy=sessions_pb2.STRATEGY_SELECTOR,
                selector=sessions_pb2.SelectorSpec(
                    allowed_transitions=[
                        sessions_pb2.AgentTransitions(from_agent="ann", to_agents=["ben", "zed"])
                    ]
                ),
            )
        assert [v.field for v in caught.value.violations] == [
            "session.selector.allowed_transitions[0].to_agents[1]"
        ]
        with pytest.raises(InvalidArgument) as handoff:
            await client.create_session(
                goal="Talk",
                inline_agents=[member("ann")],
                strategy=sessions_pb2.STRATEGY_HANDOFF,
                handoff=sessions_pb2.HandoffSpec(initial_agent="zed"),
            )
        assert [v.field for v in handoff.value.violations] == ["session.handoff.initial_agent"]
        assert [s async for s in client.list_sessions()] == [], "nothing half-written"


# -- handoff -----------------------------------------------------------------------------------


def tools_offered(chat: Chat) -> list[str]:
    return sorted(t["function"]["name"] for t in chat.get("tools", []))


async def test_an_agent_hands_off_with_a_note_and_the_next_one_answers(team: Team) -> None:
    def script(chat: Chat) -> Answer:
        who = speaker(chat)
        if who == "triage":
            return Answer(tool_calls=[("transfer_to_billing", {"note": "refund order 42"})])
        return Answer(text="billing: order 42 refunded")

    team.script(script)
    async with team.client() as client:
        session = await client.create_session(
            goal="I want my money back",
            inline_agents=[member("triage"), member("billing", "refunds"), member("sales")],
            strategy=sessions_pb2.STRATEGY_HANDOFF,
            handoff=sessions_pb2.HandoffSpec(
                handoffs=[sessions_pb2.AgentTransitions(from_agent="triage", to_agents=["billing"])]
            ),
        )
        events = await run_all(client, session.name)
    (handoff,) = [e.handoff for e in events if e.HasField("handoff")]
    assert (handoff.from_agent, handoff.to_agent, handoff.note, handoff.count) == (
        "agents/triage",
        "agents/billing",
        "refund order 42",
        1,
    )
    completed = events[-1].session_completed
    assert completed.termination_reason == "answered"
    assert completed.final_answer == "billing: order 42 refunded"
    triage_call, billing_call = team.provider.requests
    assert tools_offered(triage_call) == ["transfer_to_billing"], "only the allowed target"
    assert tools_offered(billing_call) == [], "billing may hand off to nobody"
    assert "triage handed the conversation to you: refund order 42" in last_user(billing_call)


async def test_handoffs_stop_at_the_cap_and_the_last_agent_answers(team: Team) -> None:
    def script(chat: Chat) -> Answer:
        offered = tools_offered(chat)
        if offered:  # hand to whoever is offered, for as long as it is
            return Answer(tool_calls=[(offered[0], {"note": "your turn"})])
        return Answer(text=f"{speaker(chat)} answers at last")

    team.script(script)
    async with team.client() as client:
        session = await client.create_session(
            goal="Ping pong",
            inline_agents=[member("ping"), member("pong")],
            strategy=sessions_pb2.STRATEGY_HANDOFF,
            handoff=sessions_pb2.HandoffSpec(max_handoffs=3),
        )
        events = await run_all(client, session.name)
    handoffs = [e.handoff for e in events if e.HasField("handoff")]
    assert [(h.from_agent, h.count) for h in handoffs] == [
        ("agents/ping", 1),
        ("agents/pong", 2),
        ("agents/ping", 3),
    ]
    assert events[-1].session_completed.final_answer == "pong answers at last"
    assert len(team.provider.requests) == 4


# -- human approval ----------------------------------------------------------------------------


def writes_memory(chat: Chat) -> Answer:
    if not any(m["role"] == "tool" for m in chat["messages"]):
        return Answer(tool_calls=[("memory_write", {"key": "plan", "value": "picnic"})])
    tool = next(m for m in chat["messages"] if m["role"] == "tool")
    return Answer(text=f"tool said {tool['content']}")


async def _approval_of(events: AsyncIterator[events_pb2.SessionEvent]) -> approvals_pb2.Approval:
    async for event in events:
        if event.HasField("approval_requested"):
            return event.approval_requested.approval
    raise AssertionError("no approval_requested")


def careful(agent_id: str = "keeper") -> agents_pb2.AgentDefinition:
    return member(
        agent_id, tools=["memory_write"], tool_approval=agents_pb2.TOOL_APPROVAL_READ_WRITE
    )


@pytest.mark.parametrize("approve", [True, False])
async def test_a_tool_call_waits_for_approve_or_reject_over_the_api(
    team: Team, approve: bool
) -> None:
    team.script(writes_memory)
    async with team.client() as client:
        await client.create_agent("keeper", careful())  # memory needs a stored agent
        session = await client.create_session(
            goal="Remember the plan",
            agents=["agents/keeper"],
            limits=sessions_pb2.SessionLimits(max_rounds=1),
        )
        run = client.run(session.name)
        approval = await asyncio.wait_for(_approval_of(run), 10)
        assert approval.call.name == "memory_write"
        assert approval.agent == "agents/keeper"
        assert approval.permission == 2  # READ_WRITE
        pending = await client.get_session(session.name)
        assert [a.approval_id for a in pending.pending_approvals] == [approval.approval_id]
        answer = client.approve_tool_call if approve else client.reject_tool_call
        answered = await answer(
            session.name, approval.approval_id, comment="looked fine", request_id="r-1"
        )
        retried = await answer(
            session.name, approval.approval_id, comment="looked fine", request_id="r-1"
        )
        assert retried == answered, "a retry (same request_id) gets the same answer"
        with pytest.raises(FailedPrecondition) as twice:
            await client.approve_tool_call(session.name, approval.approval_id)
        assert twice.value.reason == "APPROVAL_RESOLVED"
        rest = [event async for event in run]
        memory = await client.list_memories("agents/keeper/users/default")
    resolved = next(e.approval_resolved.approval for e in rest if e.HasField("approval_resolved"))
    assert resolved.comment == "looked fine"
    final = rest[-1].session_completed.final_answer
    if approve:
        assert resolved.state == approvals_pb2.APPROVAL_STATE_APPROVED
        assert [m.name.rsplit("/", 1)[-1] for m in memory] == ["plan"]
        assert final == 'tool said {"stored":"plan"}'
    else:
        assert resolved.state == approvals_pb2.APPROVAL_STATE_REJECTED
        assert memory == []
        assert "a reviewer rejected the call: looked fine" in final


async def test_an_unanswered_call_times_out_and_bad_answers_are_refused(team: Team) -> None:
    team.script(writes_memory)
    async with team.client() as client:
        await client.create_agent("keeper", careful())
        session = await client.create_session(
            goal="Remember the plan",
            agents=["agents/keeper"],
            limits=sessions_pb2.SessionLimits(
                max_rounds=1, approval_timeout=duration_pb2.Duration(seconds=1)
            ),
        )
        run = client.run(session.name)
        approval = await asyncio.wait_for(_approval_of(run), 10)
        for call, error, detail in (
            (client.approve_tool_call(session.name, "no-such-id"), NotFound, "APPROVAL_NOT_FOUND"),
            (client.approve_tool_call(session.name, "bad id!"), InvalidArgument, "approval_id"),
            (client.reject_tool_call("nope", approval.approval_id), InvalidArgument, "session"),
        ):
            with pytest.raises(error) as caught:
                await call
            found = caught.value
            fields = [v.field for v in getattr(found, "violations", ())]
            assert detail in (found.reason, *fields), (found, fields)
        rest = await asyncio.wait_for(_rest(run), 10)
        with pytest.raises(FailedPrecondition):  # expired: it can no longer be answered
            await client.approve_tool_call(session.name, approval.approval_id)
        stranger_key = await create_api_key(team.memory.address, "strangers", "s")
        async with AgentmeshClient(team.target, api_key=stranger_key, timeout=10) as stranger:
            with pytest.raises(NotFound):
                await stranger.reject_tool_call(session.name, approval.approval_id)
    resolved = next(e.approval_resolved.approval for e in rest if e.HasField("approval_resolved"))
    assert resolved.state == approvals_pb2.APPROVAL_STATE_EXPIRED
    result = next(e.tool_result for e in rest if e.HasField("tool_result"))
    assert result.error.code == 4  # DEADLINE_EXCEEDED: the call did not run
    assert kinds(rest)[-1] == "session_completed"


async def _rest(events: AsyncIterator[events_pb2.SessionEvent]) -> list[events_pb2.SessionEvent]:
    return [event async for event in events]


# -- parallel synthesis and plans with sub-tasks ------------------------------------------------


async def test_execute_in_parallel_ends_with_the_synthesis_agents_merge(team: Team) -> None:
    def script(chat: Chat) -> Answer:
        who = speaker(chat)
        if who == "merger":
            return Answer(text="merged: " + " + ".join(re.findall(r"fact \w+", last_user(chat))))
        return Answer(text=f"fact {who}", delay_seconds=0.3)

    team.script(script)
    merger = member("merger")
    merger.type = agents_pb2.AGENT_TYPE_SYNTHESIS
    async with team.client() as client:
        events = [
            e
            async for e in client.execute(
                "Collect facts",
                inline_agents=[member("alpha"), member("beta"), merger],
                mode=orchestrator_pb2.EXECUTION_MODE_PARALLEL,
            )
        ]
    completed = events[-1].session_completed
    assert completed.final_answer == "merged: fact alpha + fact beta"
    spoken = [e.agent for e in events if e.HasField("message_completed")]
    assert sorted(spoken[:2]) == ["agents/alpha", "agents/beta"]
    assert spoken[2:] == ["agents/merger"], "the merge comes last, once"
    first_done = kinds(events).index("message_completed")
    assert kinds(events)[:first_done].count("message_started") == 2, "the stages ran at once"


async def test_a_plan_with_sub_tasks_runs_parts_first_and_replans_seeing_the_error(
    team: Team,
) -> None:
    plans = iter(
        [
            {
                "rationale": "two parts of one report, and a check",
                "tasks": [
                    {"id": "report", "description": "Write the report"},
                    {"id": "intro", "description": "Write the intro", "parent": "report"},
                    {"id": "body", "description": "Write the body", "parent": "report"},
                    {"id": "check", "description": "Check the spelling"},
                ],
            },
            {"rationale": "skip the check", "tasks": [{"id": "done", "description": "Wrap up"}]},
        ]
    )
    planner_prompts: list[str] = []

    def script(chat: Chat) -> Answer:
        system, prompt = system_of(chat), last_user(chat)
        if "You are a planner" in system:
            planner_prompts.append(prompt)
            return Answer(text=json.dumps(next(plans)))
        if "You are a writer" in system:
            return Answer(text="final report")
        if "Check the spelling" in prompt:
            return Answer(text="spellchecker is down", status=500)
        if "Write the report" in prompt:
            return Answer(text="report from: " + " and ".join(re.findall(r"task (\w+):", prompt)))
        return Answer(text=prompt.split("\n")[0].removeprefix("Task: ").lower())

    team.script(script)
    async with team.client() as client:
        planner = member("planner", capabilities=["sub-tasks"])
        planner.type = agents_pb2.AGENT_TYPE_PLANNER
        planner.prompts.system = ""  # the default planner's prompt
        session = await client.create_session(
            goal="A report",
            inline_agents=[planner],
            strategy=sessions_pb2.STRATEGY_PLANNER_EXECUTOR,
            limits=sessions_pb2.SessionLimits(max_task_retries=1),
        )
        events = await run_all(client, session.name)
        details = await client.get_session(session.name)
    assert events[-1].session_completed.final_answer == "final report", events[-1]
    tasks = {t.task_id: t for t in details.tasks}
    assert tasks["intro"].parent_task_id == tasks["body"].parent_task_id == "report"
    assert sorted(tasks["report"].depends_on) == ["body", "intro"]
    assert tasks["report"].output == "report from: intro and body"
    assert tasks["report"].start_time.ToDatetime() >= tasks["body"].end_time.ToDatetime()
    assert tasks["check"].status == sessions_pb2.TASK_STATUS_FAILED
    assert len(planner_prompts) == 2
    assert "A task may name a parent" in planner_prompts[0], "asked for sub-tasks"
    assert "Task check (Check the spelling) failed after retries: " in planner_prompts[1]
    assert "spellchecker is down" in planner_prompts[1], "the re-plan sees the error"


# -- the example team files ---------------------------------------------------------------------

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


async def test_every_example_team_file_makes_a_valid_session(team: Team) -> None:
    assert {p.stem for p in EXAMPLES} >= {
        "round-robin",
        "pipeline",
        "parallel",
        "planner-executor",
        "router",
        "selector",
        "handoff",
        "approval",
    }
    async with team.client() as client:
        for path in EXAMPLES:
            spec = load_session_spec(path)
            session = await client.create_session(
                goal="An example goal",
                inline_agents=load_agents(path),
                strategy=spec.strategy,
                limits=spec.limits,
                termination=spec.termination,
                pipeline=spec.pipeline,
                selector=spec.selector,
                handoff=spec.handoff,
            )
            assert session.strategy == spec.strategy != sessions_pb2.STRATEGY_UNSPECIFIED, path
