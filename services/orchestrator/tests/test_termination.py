"""Termination conditions composed with | and &; the token budget honoured by every strategy."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2

from agentmesh.common.v1 import agents_pb2, generation_pb2, messages_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_orchestrator.engine import EngineSettings
from agentmesh_orchestrator.termination import (
    Deadline,
    MaxRounds,
    Never,
    Phase,
    Progress,
    Stop,
    StopPhrase,
    TokenBudget,
)
from agentmesh_orchestrator.testing import Reply, system_prompt

from .conftest import TENANT, Harness, make_agent, make_session

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
RT: Any = None  # these conditions never look at the runtime


def progress(phase: Phase, *, rounds: int = 0, tokens: int = 0, text: str = "") -> Progress:
    return Progress(phase=phase, rounds_completed=rounds, total_tokens=tokens, now=NOW, text=text)


async def test_or_stops_on_the_first_condition_that_fires_in_order() -> None:
    condition = StopPhrase("done") | TokenBudget(100) | MaxRounds(3)
    assert await condition.check(RT, progress(Phase.AFTER_TURN, tokens=99, text="go on")) is None
    both = progress(Phase.AFTER_TURN, tokens=500, text="we are DONE")
    assert await condition.check(RT, both) == Stop("stop_phrase", "we are DONE")
    budget = progress(Phase.AFTER_TURN, tokens=100, text="go on")
    assert await condition.check(RT, budget) == Stop("token_budget")
    # max rounds is checked before a round starts, not after a turn
    assert await condition.check(RT, progress(Phase.AFTER_TURN, rounds=3)) is None
    assert await condition.check(RT, progress(Phase.BEFORE_ROUND, rounds=3)) == Stop("max_rounds")


async def test_and_stops_once_both_fired_even_at_different_checkpoints() -> None:
    condition = StopPhrase("agreed") & MaxRounds(2)
    assert await condition.check(RT, progress(Phase.AFTER_TURN, text="agreed")) is None
    assert await condition.check(RT, progress(Phase.BEFORE_ROUND, rounds=1)) is None
    stop = await condition.check(RT, progress(Phase.BEFORE_ROUND, rounds=2))
    assert stop == Stop("stop_phrase+max_rounds", "agreed")
    condition.reset()
    assert await condition.check(RT, progress(Phase.BEFORE_ROUND, rounds=2)) is None


async def test_never_is_neutral_and_the_deadline_fires_once_passed() -> None:
    assert isinstance(Never() | Never(), Never)
    assert (Never() | TokenBudget(5)) == TokenBudget(5)
    late = Deadline(NOW - dt.timedelta(seconds=1))
    assert await late.check(RT, progress(Phase.AFTER_TURN)) == Stop("deadline")
    assert (
        await Deadline(NOW + dt.timedelta(seconds=1)).check(RT, progress(Phase.AFTER_TURN)) is None
    )


# -- max_total_tokens, strategy by strategy (round-robin: test_round_robin.py) ----------------


def by_name(request: inference_pb2.GenerateRequest) -> Reply:
    system = system_prompt(request)
    if "You are a planner" in system:
        plan = {"rationale": "r", "tasks": [{"id": "t1", "description": "One"}]}
        return Reply(text=json.dumps(plan))
    if "Classify the goal" in system:
        return Reply(text=json.dumps({"kind": "simple", "reason": "short"}))
    return Reply(text=f"answer of {system.split('.')[0]}")


def budget(tokens: int = 100, **fields: object) -> sessions_pb2.SessionLimits:
    """A budget that admits one of these small calls (about 60 prompt tokens and a short
    answer) but not a second: a call starts only with its prompt and 16 tokens of answer
    left in the budget."""
    return sessions_pb2.SessionLimits(max_total_tokens=tokens, **fields)  # type: ignore[arg-type]


STAGES = [make_agent(f"s{i}", system=f"Stage {i}.") for i in range(3)]


async def test_a_sequential_pipeline_stops_at_the_token_budget(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_name)
    session = make_session(sessions_pb2.STRATEGY_PIPELINE, limits=budget())
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, STAGES))
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    completed = harness.events()[-1].session_completed
    assert completed.termination_reason == "token_budget"
    assert completed.final_answer == "answer of Stage 0"
    assert len(harness.gateway.requests) == 1, "no stage after the budget was spent"


async def test_a_parallel_pipeline_stops_at_the_token_budget(
    harness_factory: Callable[..., Harness],
) -> None:
    def slow_after_first(request: inference_pb2.GenerateRequest) -> Reply:
        reply = by_name(request)
        fast = "Stage 0" in system_prompt(request)
        return Reply(text=reply.text, delay_seconds=0.0 if fast else 5.0, chunks=20)

    harness = harness_factory(slow_after_first)
    session = make_session(
        sessions_pb2.STRATEGY_PIPELINE,
        limits=budget(),
        pipeline=sessions_pb2.PipelineSpec(parallel=True),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, STAGES))
    completed = harness.events()[-1].session_completed
    assert completed.termination_reason == "token_budget"
    assert completed.final_answer == "answer of Stage 0"
    assert harness.kinds().count("message_completed") == 1, "the slow stages were stopped"
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED


async def test_planner_executor_stops_at_the_token_budget_and_skips_the_tasks(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_name)
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR, limits=budget(200))
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert harness.events()[-1].session_completed.termination_reason == "token_budget"
    assert len(harness.gateway.requests) == 1, "planning spent the budget: no task called"
    assert harness.kinds().count("message_completed") == 1
    assert final.usage.total_tokens <= 200


async def test_a_plan_in_progress_stops_at_the_budget_and_its_pending_tasks_are_skipped(
    harness_factory: Callable[..., Harness],
) -> None:
    plan = {
        "rationale": "r",
        "tasks": [
            {"id": "a", "description": "First"},
            {"id": "b", "description": "Second", "depends_on": ["a"]},
        ],
    }

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "You are a planner" in system_prompt(request):
            return Reply(text=json.dumps(plan))
        return Reply(text="x" * 4000)  # one task's answer alone would exceed the budget

    harness = harness_factory(script)
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR, limits=budget(600))
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, []))
    assert harness.events()[-1].session_completed.termination_reason == "token_budget"
    # Task a's answer was cut at its max_tokens (finish reason LENGTH); too little was left
    # for task b's call. The newest answer is the final one.
    answers = [e.message_completed for e in harness.events() if e.HasField("message_completed")]
    assert answers[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert final.final_answer == answers[-1].message.content
    assert final.final_answer.startswith("xxxx")
    assert final.usage.total_tokens <= 600
    statuses = {t.task_id: t.status for t in harness.store.tasks.values()}
    assert statuses == {
        "a": sessions_pb2.TASK_STATUS_COMPLETED,
        "b": sessions_pb2.TASK_STATUS_SKIPPED,
    }


async def test_the_router_stops_at_the_token_budget_after_its_analysis(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(
        by_name, EngineSettings(retry_backoff_seconds=0.0, router_shortcuts=False)
    )
    session = make_session(sessions_pb2.STRATEGY_ROUTER, goal="Say hello", limits=budget(170))
    final = await harness.engine.run(
        harness.engine.open_run(TENANT, session, [make_agent("helper", system="Helper.")])
    )
    assert harness.events()[-1].session_completed.termination_reason == "token_budget"
    assert len(harness.gateway.requests) == 1, "the analysis spent the budget"
    assert final.final_answer == "", "an analysis is no answer"


async def test_a_stop_phrase_mid_round_counts_the_round(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_name)
    agents = [make_agent("a", system="Alpha."), make_agent("b", agents_pb2.AGENT_TYPE_CRITIC)]
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=4),
        termination=sessions_pb2.TerminationCondition(stop_phrase="answer of alpha"),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, agents))
    assert final.rounds_completed == 1
    assert final.final_answer == "answer of Alpha"
    assert len(harness.gateway.requests) == 1


async def test_a_selector_conversation_stops_at_the_token_budget(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_name)
    session = make_session(
        sessions_pb2.STRATEGY_SELECTOR,
        limits=budget(max_rounds=10),
        selector=sessions_pb2.SelectorSpec(initial_agent="s0"),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, STAGES))
    assert harness.events()[-1].session_completed.termination_reason == "token_budget"
    assert final.final_answer == "answer of Stage 0"
    assert len(harness.gateway.requests) == 1, "the initial agent spoke; nobody after it"


async def test_a_handoff_conversation_stops_at_the_token_budget(
    harness_factory: Callable[..., Harness],
) -> None:
    def hands_off(request: inference_pb2.GenerateRequest) -> Reply:
        arguments = struct_pb2.Struct()
        arguments.update({"note": "over to you"})
        target = next(t.name for t in request.tools if t.name.startswith("transfer_to_"))
        return Reply(tool_calls=[messages_pb2.ToolCall(id="h", name=target, arguments=arguments)])

    harness = harness_factory(hands_off)
    session = make_session(sessions_pb2.STRATEGY_HANDOFF, limits=budget(600))  # tool specs
    await harness.engine.run(harness.engine.open_run(TENANT, session, STAGES))
    assert harness.events()[-1].session_completed.termination_reason == "token_budget"
    assert len(harness.gateway.requests) == 1
    assert harness.kinds().count("handoff") == 1
