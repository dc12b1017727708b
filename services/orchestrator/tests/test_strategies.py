"""Pipeline, planner/executor and router sessions, tools and cancellation on the in-memory ports."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

import pytest
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import agents_pb2, generation_pb2, messages_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_orchestrator.ports import StepStored, StepWrite
from agentmesh_orchestrator.testing import Reply, last_user_content, system_prompt

from .conftest import TENANT, Harness, make_agent, make_session

PLAN = {
    "rationale": "two lookups, then a summary",
    "tasks": [
        {"id": "weather", "description": "Find the weather", "agent_type": "research"},
        {"id": "food", "description": "Choose food"},
        {
            "id": "final",
            "description": "Combine",
            "agent_type": "executor",
            "depends_on": ["weather", "food"],
        },
    ],
}


def _tool_call(name: str, **arguments: object) -> messages_pb2.ToolCall:
    args = struct_pb2.Struct()
    args.update(arguments)
    return messages_pb2.ToolCall(id=f"call-{name}", name=name, arguments=args)


def _has_tool_result(request: inference_pb2.GenerateRequest) -> bool:
    return any(m.role == messages_pb2.ROLE_TOOL for m in request.messages)


async def test_tool_calls_run_and_their_results_reach_the_model(
    harness_factory: Callable[..., Harness],
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if not _has_tool_result(request):
            return Reply(tool_calls=[_tool_call("calculator", expression="6*7")])
        tool_message = next(m for m in request.messages if m.role == messages_pb2.ROLE_TOOL)
        return Reply(text=f"The answer is {json.loads(tool_message.content)['value']:.0f}")

    harness = harness_factory(script)
    agent = make_agent("math", tools=["calculator"])
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, [agent]))
    assert final.final_answer == "The answer is 42"
    result = next(e.tool_result for e in harness.events() if e.HasField("tool_result"))
    assert result.result.fields["value"].number_value == 42.0
    assert not result.HasField("error")
    assert [t.name for t in harness.gateway.requests[0].tools] == ["calculator"]


async def test_a_tool_the_agent_may_not_use_is_refused_and_never_runs(
    harness_factory: Callable[..., Harness],
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if not _has_tool_result(request):
            return Reply(tool_calls=[_tool_call("calculator", expression="1/0")])
        return Reply(text="I could not use the calculator.")

    harness = harness_factory(script)
    agent = make_agent("talker")  # no tools allowed
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, [agent]))
    result = next(e.tool_result for e in harness.events() if e.HasField("tool_result"))
    assert result.error.code == code_pb2.PERMISSION_DENIED
    assert not result.HasField("result")
    assert harness.gateway.requests[0].tools == []
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED


async def test_tool_errors_reach_the_model_as_results(
    harness_factory: Callable[..., Harness],
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if not _has_tool_result(request):
            return Reply(tool_calls=[_tool_call("calculator", expression="__import__('os')")])
        tool_message = next(m for m in request.messages if m.role == messages_pb2.ROLE_TOOL)
        return Reply(text=f"Error seen: {json.loads(tool_message.content)['error']['code']}")

    harness = harness_factory(script)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    agent = make_agent("math", tools=["calculator"])
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, [agent]))
    assert final.final_answer == "Error seen: INVALID_ARGUMENT"


async def test_sequential_pipeline_feeds_stage_outputs_forward(
    harness_factory: Callable[..., Harness],
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        prompt = last_user_content(request)
        if "writer" in system_prompt(request):
            return Reply(text=f"Draft based on: {prompt.split('Results:')[-1].strip()}")
        return Reply(text="facts: lake, sun")

    harness = harness_factory(script)
    researcher = make_agent("researcher", agents_pb2.AGENT_TYPE_RESEARCH)
    writer = make_agent("writer", agents_pb2.AGENT_TYPE_SYNTHESIS, system="You are the writer.")
    session = make_session(
        sessions_pb2.STRATEGY_PIPELINE,
        pipeline=sessions_pb2.PipelineSpec(
            stages=[
                sessions_pb2.PipelineStage(agent="researcher", stage_name="notes"),
                sessions_pb2.PipelineStage(agent="writer", input_template="{notes}"),
            ]
        ),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, [researcher, writer]))
    assert final.final_answer == "Draft based on: facts: lake, sun"
    assert harness.events()[-1].session_completed.termination_reason == "pipeline_done"


async def test_parallel_pipeline_runs_stages_at_once(
    harness_factory: Callable[..., Harness],
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        marker = re.search(r"#\d\d", system_prompt(request))
        assert marker is not None
        return Reply(text=marker.group(0), delay_seconds=0.2)

    harness = harness_factory(script)
    agents = [make_agent(f"a{i}", system=f"You are agent #{i:02d}") for i in range(3)]
    session = make_session(
        sessions_pb2.STRATEGY_PIPELINE, pipeline=sessions_pb2.PipelineSpec(parallel=True)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, agents))
    assert loop.time() - started < 0.5, "three 0.2 s stages should overlap"
    assert final.final_answer == "## a0\n#00\n\n## a1\n#01\n\n## a2\n#02"


def planner_script(
    plan: object = PLAN, fail_times: dict[str, int] | None = None
) -> Callable[[inference_pb2.GenerateRequest], Reply]:
    """Planner returns `plan`; the executor of a task whose description is a key of
    `fail_times` fails that many times (-1: always) before it succeeds."""
    remaining = dict(fail_times or {})

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        system = system_prompt(request)
        prompt = last_user_content(request)
        if "You are a planner" in system:
            text = plan if isinstance(plan, str) else json.dumps(plan)
            return Reply(text=text)
        if "You are a writer" in system:
            return Reply(
                text="Picnic plan: "
                + ", ".join(
                    sorted(
                        line.split()[-1]
                        for line in prompt.splitlines()
                        if line.startswith("### Task")
                    )
                )
            )
        for description, times in remaining.items():
            if f"Task: {description}" in prompt and times != 0:
                remaining[description] = times - 1
                return Reply(error=status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down"))
        return Reply(text=f"done: {prompt.splitlines()[0]}", delay_seconds=0.05)

    return script


async def test_planner_executor_runs_ready_tasks_in_parallel_then_synthesizes(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(planner_script())
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR)
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    assert final.final_answer == "Picnic plan: final, food, weather"
    kinds = harness.kinds()
    assert kinds.count("plan_created") == 1
    assert kinds.count("task_started") == 3
    assert kinds.count("task_completed") == 3
    events = harness.events()
    order = [e.task_id for e in events if e.HasField("task_started")]
    assert order[-1] == "final"
    # weather and food ran concurrently: both started before either completed
    first_done = next(i for i, e in enumerate(events) if e.HasField("task_completed"))
    starts_before = [e.task_id for e in events[:first_done] if e.HasField("task_started")]
    assert sorted(starts_before) == ["food", "weather"]
    tasks = {t.task_id: t for t in harness.store.tasks.values()}
    assert all(t.status == sessions_pb2.TASK_STATUS_COMPLETED for t in tasks.values())
    assert tasks["final"].start_time.ToDatetime() >= tasks["food"].end_time.ToDatetime()
    # executors in a plan get READ_ONLY tools only, and the planner got the plan schema
    assert harness.gateway.requests[0].config.HasField("response_schema")


async def test_invalid_plans_are_re_asked_with_the_reason_then_fail_clearly(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(planner_script(plan="no plan here"))
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR)
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_FAILED
    assert final.error.code == code_pb2.FAILED_PRECONDITION
    assert "no valid plan in 3 attempts" in final.error.message
    assert len(harness.gateway.requests) == 3
    assert "was rejected: plan: not valid JSON" in last_user_content(harness.gateway.requests[1])
    assert harness.kinds()[-1] == "session_failed"


async def test_cancelling_a_run_ends_with_session_cancelled_and_usage(
    harness_factory: Callable[..., Harness],
) -> None:
    def slow(request: inference_pb2.GenerateRequest) -> Reply:
        return Reply(text="word " * 50, chunks=50, delay_seconds=5.0)

    harness = harness_factory(slow)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    run = harness.engine.open_run(TENANT, session, [make_agent("slow")])
    task = asyncio.create_task(harness.engine.run(run))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kinds = harness.kinds()
    assert kinds[-1] == "session_cancelled"
    assert "content_delta" in kinds, "deltas streamed before the cancel are stored"
    assert harness.store.sessions[(TENANT, "sessions/s1")].status == (
        sessions_pb2.SESSION_STATUS_CANCELLED
    )


async def test_deltas_are_batched_and_stored_in_order(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(lambda _: Reply(text="abcdefghij" * 10, chunks=100))
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    await harness.engine.run(harness.engine.open_run(TENANT, session, [make_agent("a")]))
    deltas = [e.content_delta.text for e in harness.events() if e.HasField("content_delta")]
    assert "".join(deltas) == "abcdefghij" * 10
    assert len(deltas) < 10, f"100 chunks should be batched, got {len(deltas)} events"


async def test_a_turn_is_stored_in_one_commit(harness_factory: Callable[..., Harness]) -> None:
    """message_started, the text, message_completed, the ledger row and the message: one write
    (with the session's start, announced with its first turn); the end with its status."""
    harness = harness_factory(lambda _: Reply(text="one two three", chunks=3))
    commits: list[StepWrite] = []
    commit = harness.store.commit_step

    async def recording(
        tenant: str, session: str, step: StepWrite, *, lease_owner: str = ""
    ) -> StepStored:
        commits.append(step)
        return await commit(tenant, session, step, lease_owner=lease_owner)

    harness.store.commit_step = recording  # type: ignore[method-assign]
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    await harness.engine.run(harness.engine.open_run(TENANT, session, [make_agent("a")]))

    kinds = [[str(e.WhichOneof("payload")) for e in step.events] for step in commits]
    assert kinds == [
        [
            "session_started",
            "agent_spawned",
            "message_started",
            "content_delta",
            "message_completed",
        ],
        ["session_completed"],
    ], kinds
    turn, end = commits
    assert turn.update is not None
    assert "status" in turn.update_fields
    assert turn.update.status == sessions_pb2.SESSION_STATUS_RUNNING
    assert [e.idempotency_key for e in turn.executions] == [f"{session.name}/r1-a/0"]
    assert [m.message.content for m in turn.messages] == ["one two three"]
    assert end.update is not None
    assert end.update.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert "rounds_completed" in end.update_fields
    assert [e.seq for e in harness.events()] == list(range(1, 7))


async def test_a_recorded_model_call_is_not_repeated_on_resume(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(lambda _: Reply(text="first answer"))
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    agents = [make_agent("a")]
    await harness.engine.run(harness.engine.open_run(TENANT, session, agents))
    assert len(harness.gateway.requests) == 1
    assert harness.store.execution_lookups == 0, "a fresh run never needs the ledger"

    # Another replica resumes the same session from the start: same idempotency keys.
    resumed = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    resumed.status = sessions_pb2.SESSION_STATUS_RUNNING
    final = await harness.engine.run(harness.engine.open_run(TENANT, resumed, agents), resumed=True)
    assert len(harness.gateway.requests) == 1, "the recorded call must not be repeated"
    assert final.final_answer == "first answer"
    conversation = harness.store.messages[(TENANT, "sessions/s1")]
    assert [m.message.content for m in conversation] == ["first answer"], "remembered once"


async def test_router_sends_simple_goals_to_one_agent(
    harness_factory: Callable[..., Harness],
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "Classify the goal" in system_prompt(request):
            return Reply(text=json.dumps({"kind": "simple", "reason": "a greeting"}))
        return Reply(text="Hello!")

    harness = harness_factory(script)
    session = make_session(sessions_pb2.STRATEGY_ROUTER, goal="Say hello")
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    analysis = next(e.analysis for e in harness.events() if e.HasField("analysis"))
    assert analysis.reason == "a greeting"
    assert analysis.chosen_strategy == sessions_pb2.STRATEGY_ROUND_ROBIN
    assert final.final_answer == "Hello!"
    assert len(harness.gateway.requests) == 2


async def test_router_sends_complex_goals_to_planning(
    harness_factory: Callable[..., Harness],
) -> None:
    planning = planner_script()

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "Classify the goal" in system_prompt(request):
            return Reply(text=json.dumps({"kind": "complex", "reason": "several parts"}))
        return planning(request)

    harness = harness_factory(script)
    session = make_session(sessions_pb2.STRATEGY_ROUTER)
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert "plan_created" in harness.kinds()
    assert final.final_answer == "Picnic plan: final, food, weather"


async def test_a_failing_task_is_retried_with_backoff_then_succeeds(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(planner_script(fail_times={"Choose food": 2}))
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR)
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    failures = [e.task_failed for e in harness.events() if e.HasField("task_failed")]
    assert [(f.attempt, f.will_retry) for f in failures] == [(1, True), (2, True)]
    food = next(t for t in harness.store.tasks.values() if t.task_id == "food")
    assert food.retry_count == 2
    assert food.status == sessions_pb2.TASK_STATUS_COMPLETED


async def test_a_task_failing_for_good_triggers_one_replan_then_the_session_fails(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(planner_script(fail_times={"Choose food": -1}))
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR)
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_FAILED
    assert final.error.code == code_pb2.ABORTED
    plans = [e.plan_created.plan for e in harness.events() if e.HasField("plan_created")]
    assert [p.revision for p in plans] == [1, 2]
    assert [t.task_id for t in plans[1].tasks][:2] == ["r2-weather", "r2-food"]
    statuses = {t.task_id: t.status for t in harness.store.tasks.values()}
    assert statuses["food"] == sessions_pb2.TASK_STATUS_FAILED
    assert statuses["final"] == sessions_pb2.TASK_STATUS_SKIPPED
    assert harness.kinds()[-1] == "session_failed"


async def test_a_replan_that_works_completes_the_session(
    harness_factory: Callable[..., Harness],
) -> None:
    # Three failures exhaust the first plan's retries (1 try + 2 retries); the re-planned
    # task then succeeds.
    harness = harness_factory(planner_script(fail_times={"Choose food": 3}))
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR)
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    assert [
        e.plan_created.plan.revision for e in harness.events() if e.HasField("plan_created")
    ] == [1, 2]


@pytest.mark.parametrize(
    "analysis",
    [
        Reply(text="not json at all"),
        Reply(error=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="no schema here")),
    ],
)
async def test_router_answers_directly_when_the_model_cannot_classify(
    harness_factory: Callable[..., Harness], analysis: Reply
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "Classify the goal" in system_prompt(request):
            return analysis
        return Reply(text="A direct answer.")

    harness = harness_factory(script)
    session = make_session(sessions_pb2.STRATEGY_ROUTER, goal="Say hello")
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert final.final_answer == "A direct answer."
    chosen = next(e.analysis for e in harness.events() if e.HasField("analysis"))
    assert chosen.chosen_strategy == sessions_pb2.STRATEGY_ROUND_ROBIN
    assert "answers directly" in chosen.reason


async def test_a_planner_that_repeats_ids_is_then_held_to_numbered_ids(
    harness_factory: Callable[..., Harness],
) -> None:
    repeated = {
        "rationale": "r",
        "tasks": [{"id": "t1", "description": "Find A"}, {"id": "t1", "description": "Find B"}],
    }
    numbered = {
        "rationale": "r",
        "tasks": [
            {"id": "t1", "description": "Find A"},
            {"id": "t2", "description": "Find B", "depends_on": ["t1"]},
        ],
    }
    answers = [repeated, numbered]

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "You are a planner" in system_prompt(request):
            return Reply(text=json.dumps(answers.pop(0)))
        return Reply(text="done")

    harness = harness_factory(script)
    final = await harness.engine.run(
        harness.engine.open_run(TENANT, make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR), [])
    )
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    first, second = (
        MessageToDict(r.config.response_schema)["properties"]["tasks"]
        for r in harness.gateway.requests[:2]
    )
    assert "prefixItems" not in first
    assert [p["properties"]["id"]["const"] for p in second["prefixItems"]][:2] == ["t1", "t2"]
    assert "duplicate task id; number the tasks" in last_user_content(harness.gateway.requests[1])


async def test_a_session_failed_after_refused_plans_reports_the_tokens_they_used(
    harness_factory: Callable[..., Harness],
) -> None:
    """Issue 16, finding 12: every plan attempt was refused (it missed the schema) but was
    paid for; session_failed must say so, not report empty usage."""
    refused = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="not the schema")
    refused.details.add().Pack(error_details_pb2.ErrorInfo(reason="STRUCTURED_OUTPUT_INVALID"))
    spent = generation_pb2.Usage(
        prompt_tokens=100, completion_tokens=50, total_tokens=150, cost_micros_usd=7
    )
    harness = harness_factory(lambda _: Reply(error=refused, error_usage=spent))
    final = await harness.engine.run(
        harness.engine.open_run(TENANT, make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR), [])
    )
    assert final.status == sessions_pb2.SESSION_STATUS_FAILED
    assert len(harness.gateway.requests) == 3
    failed = harness.events()[-1].session_failed
    for usage in (failed.usage, final.usage):
        assert (usage.prompt_tokens, usage.completion_tokens) == (300, 150)
        assert (usage.total_tokens, usage.cost_micros_usd) == (450, 21)
    ledger = [e.usage.total_tokens for e in harness.store.executions.values()]
    assert ledger == [150, 150, 150], "each refused call is in the usage ledger with its tokens"


async def test_a_plan_cut_by_max_tokens_is_asked_again_with_fewer_tasks(
    harness_factory: Callable[..., Harness],
) -> None:
    cut = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="cut by max_tokens")
    cut.details.add().Pack(error_details_pb2.ErrorInfo(reason="STRUCTURED_OUTPUT_INVALID"))
    calls = 0

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        nonlocal calls
        if "You are a planner" in system_prompt(request):
            calls += 1
            return Reply(error=cut) if calls < 3 else Reply(text=json.dumps(PLAN))
        return Reply(text="done")

    harness = harness_factory(script)
    final = await harness.engine.run(
        harness.engine.open_run(TENANT, make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR), [])
    )
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    caps = [
        r.config.response_schema["properties"]["tasks"]["maxItems"]
        for r in harness.gateway.requests[:3]
    ]
    assert caps == [6, 3, 2]
