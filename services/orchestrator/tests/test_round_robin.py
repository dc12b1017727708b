"""Round-robin sessions on the in-memory ports: order, termination, events and usage."""

from __future__ import annotations

from collections.abc import Callable

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_orchestrator.testing import Reply, last_user_content, system_prompt

from .conftest import TENANT, Harness, make_agent, make_session


def by_agent(request: inference_pb2.GenerateRequest) -> Reply:
    system = system_prompt(request)
    if "optimist" in system:
        return Reply(text="Sunny park by the lake, bring lemonade.")
    if "skeptic" in system:
        return Reply(text="Check the forecast first; rain is likely.")
    if "judge" in system:
        done = "forecast" in " ".join(m.content for m in request.messages)
        return Reply(text="GOAL REACHED: both views heard" if done else "GOAL NOT REACHED")
    return Reply(text="?")


AGENTS = [
    make_agent("optimist", system="You are the optimist."),
    make_agent("skeptic", agents_pb2.AGENT_TYPE_CRITIC, system="You are the skeptic."),
]


async def test_each_round_every_agent_speaks_once_in_order(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_agent)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=2)
    )
    run = harness.engine.open_run(TENANT, session, AGENTS)
    final = await harness.engine.run(run)

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert final.rounds_completed == 2
    speakers = [e.agent for e in harness.events() if e.WhichOneof("payload") == "message_completed"]
    assert speakers == ["agents/optimist", "agents/skeptic"] * 2
    kinds = harness.kinds()
    assert kinds[0] == "session_started"
    assert kinds[1:3] == ["agent_spawned", "agent_spawned"]
    assert kinds[-1] == "session_completed"
    assert kinds.count("session_completed") == 1
    seqs = [e.seq for e in harness.events()]
    assert seqs == list(range(1, len(seqs) + 1))
    completed = harness.events()[-1].session_completed
    assert completed.termination_reason == "max_rounds"
    assert completed.final_answer == "Check the forecast first; rain is likely."
    assert completed.usage.total_tokens > 0
    assert completed.usage.total_tokens == final.usage.total_tokens


async def test_agents_see_each_other_as_named_user_turns(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_agent)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    await harness.engine.run(harness.engine.open_run(TENANT, session, AGENTS))
    skeptic_call = harness.gateway.requests[1]
    assert "[optimist] Sunny park" in " ".join(m.content for m in skeptic_call.messages)
    assert "Plan a picnic" in last_user_content(skeptic_call)


async def test_stop_phrase_ends_the_session_with_that_message(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_agent)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=5),
        termination=sessions_pb2.TerminationCondition(stop_phrase="RAIN IS LIKELY"),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, AGENTS))
    assert final.final_answer == "Check the forecast first; rain is likely."
    assert harness.events()[-1].session_completed.termination_reason == "stop_phrase"
    assert final.rounds_completed == 1


async def test_judge_ends_the_session_when_the_goal_is_reached(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_agent)
    judge = make_agent("judge", agents_pb2.AGENT_TYPE_VALIDATION, system="You are the judge.")
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=5),
        termination=sessions_pb2.TerminationCondition(judge_agent="judge"),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, [*AGENTS, judge]))
    assert harness.events()[-1].session_completed.termination_reason == "judge"
    speakers = [e.agent for e in harness.events() if e.WhichOneof("payload") == "message_completed"]
    assert speakers == ["agents/optimist", "agents/skeptic", "agents/judge"]
    assert final.rounds_completed == 1


async def test_token_budget_stops_the_session(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(by_agent)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=50, max_total_tokens=100),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, AGENTS))
    assert harness.events()[-1].session_completed.termination_reason == "token_budget"
    assert len(harness.gateway.requests) == 1
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED


async def test_single_step_runs_one_round_and_leaves_the_session_running(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(by_agent)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=3)
    )
    run = harness.engine.open_run(TENANT, session, AGENTS)
    after = await harness.engine.run(run, single_step=True)
    assert after.status == sessions_pb2.SESSION_STATUS_RUNNING
    assert after.rounds_completed == 1
    assert "session_completed" not in harness.kinds()
    after = await harness.engine.run(run, single_step=True)
    assert after.rounds_completed == 2
    assert harness.kinds().count("session_started") == 1
