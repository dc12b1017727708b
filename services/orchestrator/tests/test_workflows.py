"""Workflows through the public API (issue 14): the seed's two examples, transitions with
required and optional agents, retries and timeouts, rules, idempotent fires, place agents and
schedules fired by the due-work loop. An in-process orchestrator over a real memory service
(SQLite and PostgreSQL) with a scripted model."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict, ParseDict
from google.rpc import code_pb2, status_pb2

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh.workflow.v1 import schedule_pb2, workflow_pb2
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import FailedPrecondition, InvalidArgument
from agentmesh_orchestrator.testing import Reply, last_user_content, system_prompt

from .api_mesh import Mesh, start_mesh

REVIEW_SCHEMA = {
    "type": "object",
    "properties": {
        "assessment": {"type": "string"},
        "confidence_score": {"type": "number"},
    },
    "required": ["assessment", "confidence_score"],
}


def review_workflow(**execution: Any) -> workflow_pb2.Workflow:
    document: dict[str, Any] = {
        "places": [{"id": "submitted"}, {"id": "reviewed"}],
        "transitions": [
            {
                "id": "ai_review",
                "fromPlaces": ["submitted"],
                "toPlace": "reviewed",
                "rules": ["exists(data.content)"],
                "agentExecution": {
                    "agent": "agents/content-reviewer",
                    "goal": "Review: {document_content}",
                    "inputMapping": {
                        "document_content": "data.content",
                        "document_type": "metadata.type",
                    },
                    "outputMapping": {
                        "data.review_result": "assessment",
                        "data.review_score": "confidence_score",
                        "metadata.reviewer": "agent_id",
                        "metadata.review_timestamp": "timestamp",
                    },
                    "required": True,
                    "timeout": "30s",
                    "retry": {
                        "maxAttempts": 3,
                        "backoff": "0s",
                        "retryOn": ["RETRY_ON_TIMEOUT", "RETRY_ON_RATE_LIMIT"],
                    },
                }
                | execution,
            }
        ],
    }
    return ParseDict(document, workflow_pb2.Workflow())


def classification_workflow() -> workflow_pb2.Workflow:
    return ParseDict(
        {
            "places": [{"id": "pending_classification"}, {"id": "categorized"}],
            "transitions": [
                {
                    "id": "move_to_categorized",
                    "fromPlaces": ["pending_classification"],
                    "toPlace": "categorized",
                }
            ],
            "placeAgents": [
                {
                    "id": "classifier",
                    "place": "pending_classification",
                    "execution": {
                        "agent": "agents/content-classifier",
                        "inputMapping": {"content": "data.content"},
                        "outputMapping": {
                            "data.classification": "category",
                            "metadata.classifier": "agent_id",
                        },
                    },
                    "generation": {"temperature": 0.1, "maxTokens": 50},
                    "triggerRules": [
                        "exists(data.content)",
                        'metadata.status == "unclassified"',
                    ],
                    "autoTransition": "move_to_categorized",
                    "schedule": {"initialDelay": "0.2s", "maxExecutions": 1},
                }
            ],
        },
        workflow_pb2.Workflow(),
    )


def reviewer(agent_id: str = "content-reviewer") -> agents_pb2.AgentDefinition:
    definition = agents_pb2.AgentDefinition(
        name=agent_id,
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        model=agents_pb2.ModelSelection(route="default"),
        prompts=agents_pb2.AgentPrompts(system=f"{agent_id}. Answer in JSON."),
    )
    definition.generation.response_schema.update(REVIEW_SCHEMA)
    return definition


def answer(**fields: Any) -> Reply:
    return Reply(text=json.dumps(fields), chunks=2)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


Script = Callable[[inference_pb2.GenerateRequest], Reply]


async def started(database_url: str, script: Script, **settings: str) -> tuple[Mesh, Any]:
    return await start_mesh(database_url, script, workflow_poll_seconds="0.2", **settings)


async def events_of(client: AgentmeshClient, workflow: str) -> list[workflow_pb2.WorkflowEvent]:
    found: list[workflow_pb2.WorkflowEvent] = []
    last = (await client.get_workflow(workflow)).last_event_seq

    async def collect() -> None:
        async for event in client.workflow_events(workflow):
            found.append(event)
            if event.seq >= last:
                return

    await asyncio.wait_for(collect(), 10)
    return found


def kinds(events: list[workflow_pb2.WorkflowEvent]) -> list[str]:
    return [str(event.WhichOneof("payload")) for event in events]


async def test_the_seed_review_transition_runs_its_agent_and_moves_the_token(
    database_url: str,
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        assert "content-reviewer" in system_prompt(request)
        assert "Quarterly results" in last_user_content(request)
        return answer(assessment="approve", confidence_score=0.9)

    mesh, shutdown = await started(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_agent("content-reviewer", reviewer())
            workflow = await client.create_workflow(review_workflow(), workflow_id="review")
            assert workflow.name == "workflows/review"
            token = await client.create_token(
                workflow.name,
                data={"content": "Quarterly results are up."},
                metadata={"type": "memo"},
            )
            assert token.place == "submitted"
            reply = await client.fire_transition(token.name, "ai_review", request_id="r1")
            assert reply.fired
            moved = reply.token
            assert moved.place == "reviewed"
            data, metadata = MessageToDict(moved.data), MessageToDict(moved.metadata)
            assert data["review_result"] == "approve"
            assert data["review_score"] == 0.9
            assert metadata["reviewer"] == "agents/content-reviewer"
            assert metadata["review_timestamp"].endswith("Z")
            assert [(m.transition, m.from_place, m.to_place) for m in moved.history] == [
                ("ai_review", "submitted", "reviewed")
            ]
            session = moved.history[0].session
            assert session.startswith("sessions/")
            assert (await client.get_session(session)).session.status == (
                sessions_pb2.SESSION_STATUS_COMPLETED
            )
            events = await events_of(client, workflow.name)
            assert kinds(events) == [
                "token_created",
                "transition_started",
                "agent_run",
                "transition_completed",
                "token_moved",
            ]
            assert [e.seq for e in events] == list(range(1, 6))
            assert events[2].agent_run.session == session
            assert reply.event_seq == events[-1].seq
            # The same request again: the first outcome, no second run.
            calls = len(mesh.gateway.requests)
            again = await client.fire_transition(token.name, "ai_review", request_id="r1")
            assert again.fired
            assert again.token.place == "reviewed"
            assert again.event_seq == reply.event_seq
            assert len(mesh.gateway.requests) == calls
            counts = (await client.get_workflow(workflow.name)).token_counts
            assert dict(counts) == {"reviewed": 1}
    finally:
        await shutdown()


async def test_a_transition_that_cannot_fire_says_why(database_url: str) -> None:
    mesh, shutdown = await started(database_url, lambda _: answer(assessment="x"))
    try:
        async with mesh.client() as client:
            await client.create_agent("content-reviewer", reviewer())
            workflow = await client.create_workflow(review_workflow(), workflow_id="review")
            empty = await client.create_token(workflow.name, data={"other": 1})
            with pytest.raises(FailedPrecondition) as rules:
                await client.fire_transition(empty.name, "ai_review")
            assert rules.value.reason == "TRANSITION_RULES_NOT_MET"
            assert "exists(data.content)" in str(rules.value)
            elsewhere = await client.create_token(
                workflow.name, data={"content": "x"}, place="reviewed"
            )
            with pytest.raises(FailedPrecondition) as place:
                await client.fire_transition(elsewhere.name, "ai_review")
            assert place.value.reason == "TRANSITION_NOT_ENABLED"
            with pytest.raises(InvalidArgument) as unknown:
                await client.fire_transition(elsewhere.name, "teleport")
            assert unknown.value.violations[0].field == "transition"
            assert mesh.gateway.requests == []
    finally:
        await shutdown()


async def test_a_transition_without_an_agent_commits_its_events_at_once_and_once(
    database_url: str,
) -> None:
    mesh, shutdown = await started(database_url, lambda _: answer(assessment="x"))
    try:
        async with mesh.client() as client:
            await client.create_agent("content-reviewer", reviewer())
            definition = review_workflow()
            definition.places.add(id="published")
            definition.transitions.add(id="publish", from_places=["reviewed"], to_place="published")
            workflow = await client.create_workflow(definition, workflow_id="review")
            token = await client.create_token(workflow.name, data={"score": 1}, place="reviewed")
            fired = await client.fire_transition(token.name, "publish", request_id="pub-1")
            assert (fired.fired, fired.token.place) == (True, "published")
            again = await client.fire_transition(token.name, "publish", request_id="pub-1")
            assert (again.fired, again.event_seq, again.token) == (
                True,
                fired.event_seq,
                fired.token,
            )
            mine = [e for e in await events_of(client, workflow.name) if e.token == token.name]
            assert kinds(mine) == [
                "token_created",
                "transition_started",
                "transition_completed",
                "token_moved",
            ]
            assert mine[-1].seq == fired.event_seq
            assert mesh.gateway.requests == []
    finally:
        await shutdown()


async def test_a_required_agent_that_fails_leaves_the_token_and_an_optional_one_does_not(
    database_url: str,
) -> None:
    broken = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="model refused")
    mesh, shutdown = await started(database_url, lambda _: Reply(error=broken))
    try:
        async with mesh.client() as client:
            await client.create_agent("content-reviewer", reviewer())
            required = await client.create_workflow(review_workflow(), workflow_id="strict")
            token = await client.create_token(required.name, data={"content": "x"})
            reply = await client.fire_transition(token.name, "ai_review")
            assert not reply.fired
            assert reply.token.place == "submitted"
            events = await events_of(client, required.name)
            assert kinds(events)[-2:] == ["agent_run", "transition_failed"]
            assert events[-2].agent_run.status.code != code_pb2.OK
            assert not events[-2].agent_run.will_retry, "a failure not listed in retry_on"
            assert events[-1].transition_failed.error.code != code_pb2.OK

            optional = await client.create_workflow(
                review_workflow(required=False), workflow_id="lenient"
            )
            token = await client.create_token(optional.name, data={"content": "x"})
            reply = await client.fire_transition(token.name, "ai_review")
            assert reply.fired
            assert reply.token.place == "reviewed"
            assert "review_result" not in MessageToDict(reply.token.data)
    finally:
        await shutdown()


async def test_retries_follow_the_policy_and_a_timeout_cancels_the_attempt(
    database_url: str,
) -> None:
    calls: list[str] = []
    limited = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        calls.append(last_user_content(request))
        if "rate" in last_user_content(request) and len(calls) == 1:
            return Reply(error=limited)
        if "slow" in last_user_content(request):
            return Reply(text='{"assessment": "late", "confidence_score": 0}', delay_seconds=5)
        return answer(assessment="approve", confidence_score=0.5)

    mesh, shutdown = await started(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_agent("content-reviewer", reviewer())
            workflow = await client.create_workflow(review_workflow(), workflow_id="retry")
            token = await client.create_token(workflow.name, data={"content": "rate"})
            reply = await client.fire_transition(token.name, "ai_review")
            assert reply.fired
            runs = [
                e.agent_run for e in await events_of(client, workflow.name) if e.agent_run.agent
            ]
            assert [(r.attempt, r.will_retry) for r in runs] == [(1, True), (2, False)]
            assert runs[0].status.code == code_pb2.RESOURCE_EXHAUSTED
            assert runs[0].session != runs[1].session

            timed = await client.create_workflow(
                review_workflow(timeout="1s", retry={"maxAttempts": 2, "backoff": "0s"}),
                workflow_id="timed",
            )
            token = await client.create_token(timed.name, data={"content": "slow"})
            began = time.monotonic()
            reply = await client.fire_transition(token.name, "ai_review")
            assert not reply.fired
            assert time.monotonic() - began < 15
            runs = [e.agent_run for e in await events_of(client, timed.name) if e.agent_run.agent]
            assert [(r.attempt, r.will_retry) for r in runs] == [(1, True), (2, False)]
            assert {r.status.code for r in runs} == {code_pb2.DEADLINE_EXCEEDED}
            for run in runs:
                ended = (await client.get_session(run.session)).session
                assert ended.status == sessions_pb2.SESSION_STATUS_CANCELLED
    finally:
        await shutdown()


async def test_output_the_mapping_cannot_use_fails_the_attempt(database_url: str) -> None:
    mesh, shutdown = await started(database_url, lambda _: answer(verdict="ok"))
    try:
        async with mesh.client() as client:
            definition = reviewer()
            definition.generation.ClearField("response_schema")
            await client.create_agent("content-reviewer", definition)
            workflow = await client.create_workflow(review_workflow(), workflow_id="mapping")
            token = await client.create_token(workflow.name, data={"content": "x"})
            reply = await client.fire_transition(token.name, "ai_review")
            assert not reply.fired
            failed = [
                e for e in await events_of(client, workflow.name) if e.transition_failed.transition
            ]
            assert "no field 'assessment'" in failed[0].transition_failed.error.message
    finally:
        await shutdown()


async def test_the_seed_place_agent_classifies_and_moves_the_token_on_its_own(
    database_url: str,
) -> None:
    seen: list[inference_pb2.GenerateRequest] = []

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        seen.append(request)
        return answer(category="tutorial", confidence_score=0.8)

    mesh, shutdown = await started(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_agent("content-classifier", reviewer("content-classifier"))
            workflow = await client.create_workflow(
                classification_workflow(), workflow_id="classify"
            )
            waiting = await client.create_token(
                workflow.name, data={"content": "bake bread"}, metadata={"status": "done"}
            )
            token = await client.create_token(
                workflow.name, data={"content": "bake bread"}, metadata={"status": "unclassified"}
            )

            async def moved() -> bool:
                return (await client.get_token(token.name)).place == "categorized"

            await until(moved)
            after = await client.get_token(token.name)
            assert MessageToDict(after.data)["classification"] == "tutorial"
            assert after.history[0].fired_by == workflow_pb2.FIRED_BY_PLACE_AGENT
            assert len(seen) == 1, "the token whose status is not unclassified is left alone"
            assert seen[0].config.temperature == pytest.approx(0.1)
            assert seen[0].config.max_tokens == 50
            assert (await client.get_token(waiting.name)).place == "pending_classification"
            mine = [e for e in await events_of(client, workflow.name) if e.token == token.name]
            assert kinds(mine) == [
                "token_created",
                "schedule_fired",
                "place_agent_triggered",
                "agent_run",
                "transition_started",
                "transition_completed",
                "token_moved",
            ]
    finally:
        await shutdown()


async def test_a_place_agent_added_by_an_update_runs_on_the_tokens_already_there(
    database_url: str,
) -> None:
    seen: list[inference_pb2.GenerateRequest] = []

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        seen.append(request)
        return answer(category="recipe", confidence_score=0.9)

    mesh, shutdown = await started(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_agent("content-classifier", reviewer("content-classifier"))
            definition = classification_workflow()
            without = workflow_pb2.Workflow()
            without.CopyFrom(definition)
            del without.place_agents[:]
            workflow = await client.create_workflow(without, workflow_id="late")
            sitting = await client.create_token(
                workflow.name, data={"content": "soup"}, metadata={"status": "unclassified"}
            )
            assert (await client.get_token(sitting.name)).place == "pending_classification"
            definition.name = workflow.name
            await client.update_workflow(definition)

            async def moved() -> bool:
                return (await client.get_token(sitting.name)).place == "categorized"

            await until(moved)
            assert MessageToDict((await client.get_token(sitting.name)).data) == {
                "content": "soup",
                "classification": "recipe",
            }
            assert len(seen) == 1
    finally:
        await shutdown()


async def test_a_schedule_starts_its_runs_on_time_and_stops_at_max_runs(
    database_url: str,
) -> None:
    mesh, shutdown = await started(database_url, lambda _: Reply(text="digest"))
    try:
        async with mesh.client() as client:
            await client.create_agent("writer", reviewer("writer"))
            template = sessions_pb2.Session(
                goal="Digest of {topic}, run {run_number}",
                agents=["agents/writer"],
                metadata={"topic": "bread"},
            )
            template.limits.max_rounds = 1
            schedule = schedule_pb2.Schedule(session_template=template, max_runs=2)
            schedule.interval.FromSeconds(1)
            created = await client.create_schedule(schedule, schedule_id="digest")
            first_due = created.next_run_time.ToDatetime()

            async def ran_twice() -> bool:
                return (await client.get_schedule(created.name)).runs_started == 2

            await until(ran_twice)
            done = await client.get_schedule(created.name)
            assert not done.HasField("next_run_time")
            assert len(done.recent_sessions) == 2
            goals = set()
            for name in done.recent_sessions:
                session = (await client.get_session(name)).session
                goals.add(session.goal)
                assert session.metadata["schedule"] == created.name
                # Claimed up to the lookahead early, started no earlier than due.
                due = dt.datetime.fromisoformat(session.metadata["due_time"])
                assert due >= first_due.replace(tzinfo=dt.UTC)
                assert session.create_time.ToDatetime(dt.UTC) >= due
            assert goals == {"Digest of bread, run 1", "Digest of bread, run 2"}
    finally:
        await shutdown()


async def test_definitions_are_checked_before_anything_is_stored(database_url: str) -> None:
    mesh, shutdown = await started(database_url, lambda _: Reply(text="x"))
    try:
        async with mesh.client() as client:
            with pytest.raises(InvalidArgument) as missing:
                await client.create_workflow(review_workflow(), workflow_id="review")
            assert missing.value.violations[0].field == (
                "workflow.transitions[0].agent_execution.agent"
            )
            assert "no agent named agents/content-reviewer" in str(missing.value)
            picky = reviewer()
            picky.prompts.user_template = "{metadata.author}: {goal}"
            await client.create_agent("content-reviewer", picky)
            with pytest.raises(InvalidArgument) as template:
                await client.create_workflow(review_workflow(), workflow_id="review")
            assert "metadata author" in str(template.value), "no run has that variable"
            await client.delete_agent("agents/content-reviewer")
            await client.create_agent("content-reviewer", reviewer())
            bad = review_workflow()
            bad.transitions[0].rules.append("data.x >")
            with pytest.raises(InvalidArgument) as rule:
                await client.create_workflow(bad, workflow_id="review")
            assert rule.value.violations[0].field == "workflow.transitions[0].rules[1]"
            assert await client.list_workflows() == []
            checked = await client.create_workflow(review_workflow(), validate_only=True)
            assert checked.warnings == []
            assert await client.list_workflows() == []
            schedule = schedule_pb2.Schedule(
                session_template=sessions_pb2.Session(goal="x {nope}", agents=["agents/w"]),
                cron="61 * * * *",
            )
            with pytest.raises(InvalidArgument) as goal:
                await client.create_schedule(schedule)
            assert goal.value.violations[0].field == "schedule.session_template.goal"
            schedule.session_template.goal = "x"
            with pytest.raises(InvalidArgument) as cron:
                await client.create_schedule(schedule)
            assert cron.value.violations[0].field == "schedule.cron"
    finally:
        await shutdown()
