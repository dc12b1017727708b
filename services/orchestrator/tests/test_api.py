"""The public API end to end in one process: the orchestrator's gRPC server over a real memory
service (SQLite and PostgreSQL), driven with the Python client; models are scripted."""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2
from google.rpc import status_pb2 as status
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from agentmesh.common.v1 import agents_pb2, events_pb2, messages_pb2, sessions_pb2, tools_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, tool_service_pb2, tool_service_pb2_grpc
from agentmesh_cli.demo import run_demo
from agentmesh_cli.mesh import create_api_key
from agentmesh_client.client import AgentmeshClient
from agentmesh_common import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from agentmesh_orchestrator.testing import (
    Reply,
    last_user_content,
    system_prompt,
)

from .api_mesh import Mesh, agent, collect, echo_script, kinds, start_mesh

TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


# -- runs --------------------------------------------------------------------------------------


async def test_run_streams_every_stored_event_once_and_in_order(mesh: Mesh) -> None:
    async with mesh.client() as client:
        session = await client.create_session(
            goal="Greet the team",
            inline_agents=[agent("alice"), agent("bob")],
            limits=sessions_pb2.SessionLimits(max_rounds=2),
        )
        events = await collect(client.run(session.name))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert kinds(events)[0] == "session_started"
        assert kinds(events).count("message_completed") == 4
        assert kinds(events)[-1] == "session_completed"
        assert sum(k in TERMINAL for k in kinds(events)) == 1
        assert all(e.session == session.name for e in events)
        replay = await collect(client.events(session.name))
        assert [e.SerializeToString() for e in replay] == [e.SerializeToString() for e in events]
        details = await client.get_session(session.name)
        assert details.session.status == sessions_pb2.SESSION_STATUS_COMPLETED
        assert details.session.final_answer == "Bob says hi"
        assert details.session.usage.total_tokens == events[-1].session_completed.usage.total_tokens
        assert [a.name for a in details.agents] == ["agents/alice", "agents/bob"]
        listed = [s.name async for s in client.list_sessions()]
        assert session.name in listed
    turns = mesh.telemetry.registry.get_sample_value(
        "agentmesh_orchestrator_turns_total", {"outcome": "completed"}
    )
    assert turns is not None
    assert turns >= 4


async def test_step_runs_one_round_at_a_time_and_end_session_completes_it(mesh: Mesh) -> None:
    async with mesh.client() as client:
        session = await client.create_session(
            goal="Discuss", inline_agents=[agent("alice"), agent("bob")]
        )
        first = await collect(client.step(session.name))
        assert kinds(first).count("message_completed") == 2
        assert not set(kinds(first)) & TERMINAL
        second = await collect(client.step(session.name))
        assert second[0].seq == first[-1].seq + 1
        assert kinds(second).count("session_started") == 0
        details = await client.get_session(session.name)
        assert details.session.rounds_completed == 2
        assert details.session.status == sessions_pb2.SESSION_STATUS_RUNNING
        ended = await client.end_session(session.name)
        assert ended.status == sessions_pb2.SESSION_STATUS_COMPLETED
        assert ended.final_answer == "Bob says hi"
        tail = await collect(client.events(session.name, after_seq=second[-1].seq))
        assert kinds(tail) == ["session_completed"]


async def test_execute_plans_runs_tasks_and_reports_them(database_url: str) -> None:
    plan = {
        "rationale": "two steps",
        "tasks": [
            {"id": "facts", "description": "Collect facts"},
            {"id": "write", "description": "Write it up", "depends_on": ["facts"]},
        ],
    }

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        system = system_prompt(request)
        if "Classify the goal" in system:
            return Reply(text=json.dumps({"kind": "complex", "reason": "two parts"}))
        if "You are a planner" in system:
            return Reply(text=json.dumps(plan))
        return Reply(text=f"output for: {last_user_content(request).splitlines()[0]}")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            events = await collect(client.execute("Write a report"))
            assert kinds(events)[0] == "session_started"
            assert "analysis" in kinds(events)
            assert kinds(events)[-1] == "session_completed"
            details = await client.get_session(events[0].session)
            statuses = {t.task_id: t.status for t in details.tasks}
            assert statuses == {
                "facts": sessions_pb2.TASK_STATUS_COMPLETED,
                "write": sessions_pb2.TASK_STATUS_COMPLETED,
            }
            assert all(t.HasField("start_time") and t.HasField("end_time") for t in details.tasks)
            assert details.session.plan.revision == 1
            # No members: the built-in agents that ran are the session's agents (issue 16).
            assert [a.name for a in details.agents] == [
                "builtin/router",
                "builtin/planner",
                "builtin/executor",
                "builtin/synthesis",
            ]
            router = details.agents[0]
            assert router.type == agents_pb2.AGENT_TYPE_CUSTOM
            assert router.model.route == "default"
            assert router.generation.max_tokens == 80, "as used"
            assert "Classify the goal" in router.prompts.system
    finally:
        await shutdown()


async def test_a_dropped_stream_resumes_with_every_event_exactly_once(database_url: str) -> None:
    mesh, shutdown = await start_mesh(
        database_url, lambda _: Reply(text="slowly " * 8, chunks=8, delay_seconds=0.2)
    )
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Talk",
                inline_agents=[agent("alice")],
                limits=sessions_pb2.SessionLimits(max_rounds=2),
            )
            seen: list[events_pb2.SessionEvent] = []
            async for event in client.run(session.name):
                seen.append(event)
                if len(seen) == 3:
                    break  # the client goes away; the session keeps running
            rest = await collect(client.events(session.name, after_seq=seen[-1].seq))
            every = [e.seq for e in seen + rest]
            assert every == list(range(1, len(every) + 1))
            assert kinds(rest)[-1] == "session_completed"
    finally:
        await shutdown()


async def test_cancel_on_disconnect_cancels_the_session(database_url: str) -> None:
    mesh, shutdown = await start_mesh(
        database_url, lambda _: Reply(text="x " * 40, chunks=40, delay_seconds=4.0)
    )
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Talk", inline_agents=[agent("alice")], cancel_on_disconnect=True
            )
            async for event in client.run(session.name):
                if event.WhichOneof("payload") == "content_delta":
                    break
            events = await asyncio.wait_for(collect(client.events(session.name)), 10)
            assert kinds(events)[-1] == "session_cancelled"
            assert events[-1].session_cancelled.reason == "client_disconnected"
            assert events[-1].session_cancelled.usage.total_tokens >= 0
    finally:
        await shutdown()


async def test_cancel_session_stops_a_run_and_bills_usage_so_far(database_url: str) -> None:
    calls = 0

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        nonlocal calls
        calls += 1
        return Reply(text="done", delay_seconds=0.0 if calls == 1 else 10.0)

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Talk", inline_agents=[agent("alice"), agent("bob")]
            )
            run = client.run(session.name).__aiter__()
            while (await run.__anext__()).WhichOneof("payload") != "message_completed":
                pass
            cancelled = await client.cancel_session(session.name)
            assert cancelled.status == sessions_pb2.SESSION_STATUS_CANCELLED
            rest = [event async for event in run]
            assert kinds(rest)[-1] == "session_cancelled"
            assert rest[-1].session_cancelled.usage.total_tokens > 0, "the first turn is billed"
            again = await client.cancel_session(session.name)
            assert again.status == sessions_pb2.SESSION_STATUS_CANCELLED
    finally:
        await shutdown()


# -- tools -------------------------------------------------------------------------------------


async def test_a_tool_the_agent_may_not_use_is_refused_over_the_api(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if not any(m.role == messages_pb2.ROLE_TOOL for m in request.messages):
            args = struct_pb2.Struct()
            args.update({"key": "secret", "value": "x"})
            return Reply(
                tool_calls=[messages_pb2.ToolCall(id="c1", name="memory_write", arguments=args)]
            )
        return Reply(text="could not write")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_agent("alice", agent("alice", tools=["memory_read"]))
            session = await client.create_session(
                goal="Remember",
                agents=["agents/alice"],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
            result = next(e.tool_result for e in events if e.HasField("tool_result"))
            assert result.error.code == code_pb2.PERMISSION_DENIED
            with pytest.raises(NotFound):
                await client.get_memory("agents/alice/users/default/memories/secret")
            assert [t.name for t in mesh.gateway.requests[0].tools] == ["memory_read"]
    finally:
        await shutdown()


async def test_memory_tools_store_through_the_memory_service(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if not any(m.role == messages_pb2.ROLE_TOOL for m in request.messages):
            args = struct_pb2.Struct()
            args.update({"key": "color", "value": "teal"})
            return Reply(
                tool_calls=[messages_pb2.ToolCall(id="c1", name="memory_write", arguments=args)]
            )
        return Reply(text="stored")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_agent("alice", agent("alice", tools=["memory_write"]))
            session = await client.create_session(
                goal="Remember",
                agents=["agents/alice"],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
                metadata={"user": "u7"},
            )
            await collect(client.run(session.name))
            entry = await client.get_memory("agents/alice/users/u7/memories/color")
            assert entry.value.string_value == "teal"
            # An inline agent is no stored agent: it has no memory, so it may not ask for any.
            with pytest.raises(InvalidArgument) as refused:
                await client.create_session(
                    goal="Remember",
                    inline_agents=[agent("bob", tools=["calculator", "memory_write"])],
                )
            (violation,) = refused.value.violations
            assert violation.field == "session.inline_agents[0].tools[1]"
            assert "memory_write keeps memory for agents created with CreateAgent" in (
                violation.description
            )
            stored = [s.name async for s in client.list_sessions()]
            assert stored == [session.name], "nothing was stored"
    finally:
        await shutdown()


# -- edge --------------------------------------------------------------------------------------


async def test_calls_without_a_valid_key_are_unauthenticated(mesh: Mesh) -> None:
    async with mesh.raw_client("not-a-key") as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.get_session("sessions/x")
        assert caught.value.reason == "API_KEY_INVALID"
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.orchestrator.port}")
    async with AgentmeshClient("unused", api_key="x", channel=channel) as client:
        client._metadata = ()  # no key at all
        with pytest.raises(Unauthenticated) as missing:
            await client.get_session("sessions/x")
        assert missing.value.reason == "API_KEY_MISSING"


async def test_tenants_cannot_see_or_touch_each_others_sessions(mesh: Mesh) -> None:
    async with mesh.client("acme") as acme, mesh.client("globex") as globex:
        created = await acme.create_agent("analyst", agent("analyst"))
        session = await acme.create_session(goal="Secret plan", agents=[created.name])
        for attempt in (
            globex.get_session(session.name),
            globex.cancel_session(session.name),
            globex.get_agent(created.name),
            collect(globex.events(session.name)),
            globex.send_message(session.name, "hi"),
        ):
            with pytest.raises(NotFound):
                await attempt
        assert [s.name async for s in globex.list_sessions()] == []
        assert [a.name async for a in globex.list_agents()] == []
        with pytest.raises(InvalidArgument) as caught:
            await globex.create_session(goal="steal", agents=[created.name])
        assert caught.value.violations[0].field == "session.agents[0]"


async def test_tenant_request_limit_answers_resource_exhausted_with_retry_info(
    database_url: str,
) -> None:
    local = f"local-{uuid.uuid4().hex[:6]}"
    mesh, shutdown = await start_mesh(
        database_url, echo_script, requests_per_minute="3", unthrottled_tenants=local
    )
    try:
        async with mesh.client() as client:
            for _ in range(3):
                await client.list_tools()
            with pytest.raises(ResourceExhausted) as caught:
                await client.list_tools()
            assert caught.value.reason == "TENANT_RATE_LIMITED"
            assert caught.value.retry_after is not None
            assert 0 < caught.value.retry_after <= 20
        async with mesh.client("globex") as other:
            await other.list_tools()  # another tenant has its own budget
        key = await create_api_key(mesh.memory.address, local, "agentmesh up")
        async with mesh.raw_client(key) as unthrottled:
            for _ in range(10):  # an unthrottled tenant (up's local one) has no limit
                await unthrottled.list_tools()
    finally:
        await shutdown()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s, "goal", ""), "session.goal"),
        (lambda s: setattr(s, "goal", "x" * 20_001), "session.goal"),
        (lambda s: s.limits.__setattr__("max_rounds", 1000), "session.limits.max_rounds"),
        (lambda s: s.agents.append("agents/nobody"), "session.agents[0]"),
        (lambda s: s.agents.append("nobody"), "session.agents[0]"),
        (
            lambda s: s.inline_agents.extend([agent(f"a{i}") for i in range(17)]),
            "session.agents",
        ),
        (
            lambda s: s.inline_agents.append(
                agent("x", prompts=agents_pb2.AgentPrompts(user_template="{oops}"))
            ),
            "session.inline_agents[0].prompts.user_template",
        ),
        (
            lambda s: (
                s.inline_agents.append(agent("alice")),
                s.termination.__setattr__("judge_agent", "zed"),
            ),
            "session.termination.judge_agent",
        ),
    ],
)
async def test_bad_sessions_are_rejected_naming_the_field(
    mesh: Mesh, change: Callable[[sessions_pb2.Session], object], field: str
) -> None:
    draft = sessions_pb2.Session(goal="valid goal")
    change(draft)
    async with mesh.client() as client:
        with pytest.raises(InvalidArgument) as caught:
            await client._call(
                client._stub.CreateSession,
                orchestrator_pb2.CreateSessionRequest(session=draft),
            )
        assert [v.field for v in caught.value.violations] == [field]
        assert [s async for s in client.list_sessions()] == [], "nothing half-written"


async def test_agents_are_validated_stored_with_defaults_and_snapshotted(mesh: Mesh) -> None:
    async with mesh.client() as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.create_agent(
                "bad", agent("bad", prompts=agents_pb2.AgentPrompts(user_template="{nope}"))
            )
        assert caught.value.violations[0].field == "agent.prompts.user_template"
        with pytest.raises(InvalidArgument):
            await client.create_agent("Bad Id!", agent("x"))
        planner = await client.create_agent(
            "planner", agents_pb2.AgentDefinition(type=agents_pb2.AGENT_TYPE_PLANNER)
        )
        assert "You are a planner" in planner.prompts.system, "type defaults are filled in"
        session = await client.create_session(goal="Plan", agents=[planner.name])
        updated = await client.update_agent(
            agents_pb2.AgentDefinition(name=planner.name, description="changed"),
            fields=["description"],
        )
        assert updated.description == "changed"
        assert updated.prompts.system == planner.prompts.system
        templated = await client.create_agent(
            "templated",
            agent(
                "templated", prompts=agents_pb2.AgentPrompts(system="a", user_template="Do {goal}")
            ),
        )
        replaced = await client.update_agent(
            agents_pb2.AgentDefinition(
                name=templated.name, prompts=agents_pb2.AgentPrompts(system="b")
            ),
            fields=["prompts"],
        )
        fresh = await client.create_agent(
            "fresh", agent("fresh", prompts=agents_pb2.AgentPrompts(system="b"))
        )
        # A message named in the mask is replaced whole: the template left unset is cleared
        # (and gets the default a new agent gets), not kept.
        assert replaced.prompts == fresh.prompts
        assert replaced.prompts.user_template != "Do {goal}"
        await client.delete_agent(planner.name)
        with pytest.raises(NotFound):
            await client.get_agent(planner.name)
        details = await client.get_session(session.name)
        assert details.agents[0].prompts.system == planner.prompts.system, "the team keeps its copy"


async def test_send_message_delivers_enqueues_or_rejects(database_url: str) -> None:
    seen_user_messages: list[str] = []

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        seen_user_messages.extend(
            m.content for m in request.messages if m.role == messages_pb2.ROLE_USER
        )
        return Reply(text="ok", delay_seconds=0.3)

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Chat",
                inline_agents=[agent("alice"), agent("bob")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            idle = await client.send_message(session.name, "before we start")
            assert idle.disposition == orchestrator_pb2.MESSAGE_DISPOSITION_DELIVERED
            run = client.run(session.name).__aiter__()
            while (await run.__anext__()).WhichOneof("payload") != "message_started":
                pass
            with pytest.raises(FailedPrecondition):
                await client.send_message(
                    session.name, "now!", policy=orchestrator_pb2.BUSY_POLICY_REJECT
                )
            queued = await client.send_message(session.name, "after alice")
            assert queued.disposition == orchestrator_pb2.MESSAGE_DISPOSITION_ENQUEUED
            rest = [event async for event in run]
            assert "user_message" in kinds(rest)
            assert "before we start" in seen_user_messages
            assert "after alice" in seen_user_messages, "bob's turn heard the queued message"
    finally:
        await shutdown()


# -- external tool servers ---------------------------------------------------------------------


class TravelTools(tool_service_pb2_grpc.ToolServiceServicer):
    """A backend offering tools over ToolService, as any team's service would."""

    def __init__(self, names: tuple[str, ...] = ("weather", "book", "slow", "broken")) -> None:
        self.names = names
        self.invoked: list[tool_service_pb2.InvokeToolRequest] = []

    async def ListTools(
        self, request: tool_service_pb2.ToolServiceListToolsRequest, context: object
    ) -> tool_service_pb2.ToolServiceListToolsResponse:
        read_only = tools_pb2.TOOL_PERMISSION_READ_ONLY
        specs = [
            tools_pb2.ToolSpec(
                name=name,
                description=f"the {name} tool",
                permission=tools_pb2.TOOL_PERMISSION_READ_WRITE if name == "book" else read_only,
            )
            for name in self.names
        ]
        return tool_service_pb2.ToolServiceListToolsResponse(tools=specs)

    async def InvokeTool(
        self, request: tool_service_pb2.InvokeToolRequest, context: grpc.aio.ServicerContext
    ) -> tool_service_pb2.InvokeToolResponse:
        self.invoked.append(request)
        if request.tool == "slow":
            await asyncio.sleep(5)
        if request.tool == "broken":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the booking system is down")
        result = struct_pb2.Struct()
        city = request.arguments.fields["city"].string_value
        result.update({"forecast": f"sunny in {city}"} if request.tool == "weather" else {"ok": 1})
        return tool_service_pb2.InvokeToolResponse(result=result)


@pytest.fixture
async def travel_tools() -> AsyncIterator[tuple[TravelTools, str]]:
    servicer = TravelTools()
    server = grpc.aio.server()
    tool_service_pb2_grpc.add_ToolServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def calls_then_answers(*calls: tuple[str, dict[str, object]]) -> Callable[..., Reply]:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        results = [m for m in request.messages if m.role == messages_pb2.ROLE_TOOL]
        if len(results) < len(calls):
            name, arguments = calls[len(results)]
            args = struct_pb2.Struct()
            args.update(arguments)
            call = messages_pb2.ToolCall(id=f"c{len(results)}", name=name, arguments=args)
            return Reply(tool_calls=[call])
        return Reply(text="; ".join(m.content for m in results))

    return script


async def test_registered_tool_servers_serve_their_tools_to_agents(
    database_url: str, travel_tools: tuple[TravelTools, str]
) -> None:
    servicer, address = travel_tools
    mesh, shutdown = await start_mesh(
        database_url, calls_then_answers(("weather", {"city": "Oslo"}), ("broken", {}))
    )
    try:
        async with mesh.client() as client:
            registered = await client.create_tool_server("travel", address)
            assert registered.name == "toolServers/travel"
            assert [t.name for t in registered.tools] == ["weather", "book", "slow", "broken"]
            tools = {t.spec.name: t.source for t in await client.list_tools()}
            assert tools["weather"] == "toolServers/travel"
            assert tools["calculator"] == "builtin"
            session = await client.create_session(
                goal="Plan a trip",
                inline_agents=[agent("guide", tools=["weather", "broken"])],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
            results = [e.tool_result for e in events if e.HasField("tool_result")]
            assert results[0].result.fields["forecast"].string_value == "sunny in Oslo"
            assert results[1].error.code == code_pb2.UNAVAILABLE
            assert "booking system is down" in results[1].error.message
            assert kinds(events)[-1] == "session_completed", "tool errors never crash a session"
            call = servicer.invoked[0]
            assert (call.tool, call.session, call.agent) == (
                "weather",
                session.name,
                "agents/guide",
            )
            assert call.request_id == "c0"
            await client.delete_tool_server("toolServers/travel")
            assert "weather" not in {t.spec.name for t in await client.list_tools()}
    finally:
        await shutdown()


async def test_external_tools_keep_their_permission_and_deadline(
    database_url: str, travel_tools: tuple[TravelTools, str]
) -> None:
    servicer, address = travel_tools
    judge_script = calls_then_answers(("book", {"city": "Oslo"}), ("slow", {}))

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if system_prompt(request).startswith("Judge"):
            return judge_script(request)
        return Reply(text="I booked nothing.")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_tool_server("travel", address, call_timeout_seconds=0.3)
            judge = agent("judge", tools=["book", "slow"])
            session = await client.create_session(
                goal="Check a booking",
                inline_agents=[agent("alice"), judge],
                termination=sessions_pb2.TerminationCondition(judge_agent="judge"),
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
            results = [e.tool_result for e in events if e.HasField("tool_result")]
            # The judge gets READ_ONLY tools only: booking is refused and never reaches the server.
            assert results[0].error.code == code_pb2.PERMISSION_DENIED
            assert results[1].error.code == code_pb2.DEADLINE_EXCEEDED
            assert [c.tool for c in servicer.invoked] == ["slow"]
    finally:
        await shutdown()


async def test_bad_tool_server_registrations_are_refused(
    mesh: Mesh, travel_tools: tuple[TravelTools, str]
) -> None:
    _, address = travel_tools
    async with mesh.client() as client:
        with pytest.raises(InvalidArgument) as bad_id:
            await client.create_tool_server("Bad Id", address)
        assert bad_id.value.violations[0].field == "tool_server_id"
        with pytest.raises(FailedPrecondition) as unreachable:
            await client.create_tool_server("gone", "127.0.0.1:1")
        assert unreachable.value.reason == "TOOL_SERVER_UNREACHABLE"
        await client.create_tool_server("travel", address)
        with pytest.raises(FailedPrecondition) as clash:
            await client.create_tool_server("travel-two", address)
        assert clash.value.reason == "TOOL_NAME_TAKEN"
        assert [s.name for s in await client.list_tool_servers()] == ["toolServers/travel"]


# -- more of the session API -------------------------------------------------------------------


async def test_interrupt_stops_the_turn_in_progress_and_the_message_is_heard(
    database_url: str,
) -> None:
    heard: list[str] = []

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        users = [m.content for m in request.messages if m.role == messages_pb2.ROLE_USER]
        heard.extend(users)
        slow = system_prompt(request).startswith("Alice")
        return Reply(text="long answer " * 20, chunks=20, delay_seconds=5.0 if slow else 0.0)

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Chat",
                inline_agents=[agent("alice"), agent("bob")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            run = client.run(session.name).__aiter__()
            while (await run.__anext__()).WhichOneof("payload") != "content_delta":
                pass
            reply = await client.send_message(
                session.name, "stop, change of plan", policy=orchestrator_pb2.BUSY_POLICY_INTERRUPT
            )
            assert reply.disposition == orchestrator_pb2.MESSAGE_DISPOSITION_INTERRUPTED
            rest = [event async for event in run]
            completed = [e.agent for e in rest if e.HasField("message_completed")]
            assert completed == ["agents/bob"], "alice's interrupted turn never completes"
            assert kinds(rest)[-1] == "session_completed"
            assert "stop, change of plan" in heard, "bob's turn heard the interrupting message"
    finally:
        await shutdown()


async def test_nested_sessions_know_their_children(mesh: Mesh) -> None:
    async with mesh.client() as client:
        parent = await client.create_session(goal="Big goal", inline_agents=[agent("alice")])
        child = await client.create_session(
            goal="Sub goal", inline_agents=[agent("bob")], parent=parent.name
        )
        assert child.parent == parent.name
        details = await client.get_session(parent.name)
        assert list(details.children) == [child.name]
        children = [s.name async for s in client.list_sessions(parent=parent.name)]
        assert children == [child.name]
        with pytest.raises(NotFound):
            await client.create_session(
                goal="orphan", inline_agents=[agent("c")], parent="sessions/missing"
            )


async def test_tenant_token_budget_refuses_new_runs_with_retry_info(database_url: str) -> None:
    mesh, shutdown = await start_mesh(
        database_url, lambda _: Reply(text="word " * 200), tokens_per_minute="100"
    )
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Talk",
                inline_agents=[agent("alice")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            await collect(client.run(session.name))  # spends more than the budget
            second = await client.create_session(goal="Again", inline_agents=[agent("alice")])
            with pytest.raises(ResourceExhausted) as caught:
                await collect(client.run(second.name))
            assert caught.value.reason == "TENANT_TOKENS_EXHAUSTED"
            assert caught.value.retry_after is not None
            assert caught.value.retry_after > 0
    finally:
        await shutdown()


async def test_router_sends_tool_goals_to_an_agent_with_tools(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "Classify the goal" in system_prompt(request):
            return Reply(text=json.dumps({"kind": "tool", "reason": "needs arithmetic"}))
        if not any(m.role == messages_pb2.ROLE_TOOL for m in request.messages):
            args = struct_pb2.Struct()
            args.update({"expression": "2 ** 10"})
            call = messages_pb2.ToolCall(id="c1", name="calculator", arguments=args)
            return Reply(tool_calls=[call])
        return Reply(text="1024")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            events = await collect(client.execute("What is 2 to the 10th?"))
        analysis = next(e.analysis for e in events if e.HasField("analysis"))
        assert analysis.kind == events_pb2.GOAL_KIND_TOOL
        result = next(e.tool_result for e in events if e.HasField("tool_result"))
        assert result.result.fields["value"].number_value == 1024.0
        assert events[-1].session_completed.final_answer == "1024"
    finally:
        await shutdown()


async def test_one_trace_spans_the_run_across_orchestrator_and_memory(database_url: str) -> None:
    mesh, shutdown = await start_mesh(database_url, echo_script)
    orchestrator_spans = InMemorySpanExporter()
    memory_spans = InMemorySpanExporter()
    mesh.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(orchestrator_spans))
    mesh.memory.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(memory_spans))
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Trace me",
                inline_agents=[agent("alice")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
    finally:
        await shutdown()
    run_span = next(s for s in orchestrator_spans.get_finished_spans() if s.name == "session.run")
    trace_id = run_span.context.trace_id
    turn_spans = [s for s in orchestrator_spans.get_finished_spans() if s.name == "agent.turn"]
    assert turn_spans
    assert {s.context.trace_id for s in turn_spans} == {trace_id}
    appends = [s for s in memory_spans.get_finished_spans() if s.name.endswith("/CommitStep")]
    assert trace_id in {s.context.trace_id for s in appends}, "memory writes join the run's trace"
    assert {e.trace_id for e in events} == {f"{trace_id:032x}"}


async def test_execute_with_a_timeout_ends_cancelled_at_the_deadline(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "Classify the goal" in system_prompt(request):
            return Reply(text=json.dumps({"kind": "simple", "reason": "one answer"}))
        return Reply(text="thinking " * 30, chunks=30, delay_seconds=10.0)

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            events = await collect(client.execute("Ponder", timeout_seconds=1.0))
            took = loop.time() - started
        assert kinds(events)[-1] == "session_cancelled"
        assert events[-1].session_cancelled.reason == "deadline"
        assert took < 5, f"the deadline should stop the run after ~1 s, took {took:.1f} s"
    finally:
        await shutdown()


def demo_script(request: inference_pb2.GenerateRequest) -> Reply:
    """The planner answers a two-task plan; everyone else echoes."""
    if "You are a planner" in system_prompt(request):
        tasks = [{"id": f"t{i}", "description": f"Part {i} of the goal."} for i in (1, 2)]
        return Reply(text=json.dumps({"rationale": "two parts", "tasks": tasks}))
    return echo_script(request)


async def test_the_make_run_demo_answers_a_question_then_plans_a_goal(database_url: str) -> None:
    mesh, shutdown = await start_mesh(database_url, demo_script)
    output = io.StringIO()
    console = Console(file=output, width=100, force_terminal=False)
    try:
        names = await run_demo(f"127.0.0.1:{mesh.orchestrator.port}", mesh.keys["acme"], console)
        async with mesh.client() as client:
            question, planned = [await client.get_session(name) for name in names]
    finally:
        await shutdown()
    assert question.session.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert question.session.goal == "What is the capital of France?"
    assert planned.session.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert [t.task_id for t in planned.session.plan.tasks] == ["t1", "t2"]
    assert [a.name for a in planned.agents] == [
        "agents/planner",
        "agents/executor",
        "agents/writer",
    ]
    text = output.getvalue()
    assert "SmolLM2-135M-Instruct" in text
    assert text.count("final answer") == 2
    assert planned.session.final_answer in text
    assert re.search(r"\d+ tokens generated in [0-9.]+ s: [0-9.]+ tokens/s", text)


async def test_a_failed_model_call_fails_the_session_with_its_real_cause(database_url: str) -> None:
    mesh, shutdown = await start_mesh(
        database_url,
        lambda _: Reply(error=status.Status(code=code_pb2.UNAVAILABLE, message="provider down")),
    )
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Talk",
                inline_agents=[agent("alice")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
        failed = events[-1].session_failed
        assert failed.error.code == code_pb2.UNAVAILABLE, failed.error
        assert failed.error.message == "provider down"
    finally:
        await shutdown()


async def test_after_a_restart_the_answer_completes_under_the_id_it_streamed_under(
    database_url: str,
) -> None:
    """The gateway fell back mid-stream: the abandoned text's id never completes, and
    `message_completed` carries the id of the deltas of the answer (issue 16, finding 2)."""

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        return Reply(text="the real answer", abandoned="half an ans")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Answer",
                inline_agents=[agent("alice")],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
    finally:
        await shutdown()
    text_by_id: dict[str, str] = {}
    for event in events:
        if event.HasField("content_delta"):
            text_by_id[event.message_id] = text_by_id.get(event.message_id, "") + (
                event.content_delta.text
            )
    (completed,) = [e for e in events if e.HasField("message_completed")]
    assert sorted(text_by_id.values()) == ["half an ans", "the real answer"]
    assert text_by_id[completed.message_id] == "the real answer"
    started = [e.message_id for e in events if e.HasField("message_started")]
    assert started == list(text_by_id), "each attempt's deltas follow their own start"


async def test_an_inline_agent_added_later_is_named_like_one_given_at_creation(
    mesh: Mesh,
) -> None:
    """AddAgent with `inline_agent.name="bob"` gives `agents/bob`, as CreateSession does
    (issue 16, finding 12)."""
    async with mesh.client() as client:
        session = await client.create_session(goal="Talk", inline_agents=[agent("alice")])
        added = await client.add_agent(session.name, inline=agent("bob"))
        assert list(added.agents) == ["agents/alice", "agents/bob"]
        assert [a.name for a in added.inline_agents] == ["agents/alice", "agents/bob"]
        with pytest.raises(InvalidArgument):  # the same agent, named either way, is refused
            await client.add_agent(session.name, inline=agent("agents/bob"))
