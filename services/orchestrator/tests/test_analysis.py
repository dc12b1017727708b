"""The router's shortcuts: only shapes that leave no doubt skip the model's analysis."""

from __future__ import annotations

import pytest

from agentmesh.common.v1 import agents_pb2
from agentmesh_orchestrator.agents import prepare_agent
from agentmesh_orchestrator.domain.analysis import shape_of
from agentmesh_orchestrator.domain.plans import PlanRejected, parse_plan, plan_schema

TOOLS = (
    "calculator Evaluate an arithmetic expression, e.g. '2 * (3 + 4) / sqrt(2)'.",
    "current_time The current date and time in UTC.",
    "weather The weather forecast for a city.",
)


@pytest.mark.parametrize(
    "goal", ["What is the capital of France?", "Who wrote Hamlet?", "  Why is the sky blue? "]
)
def test_one_short_question_is_simple(goal: str) -> None:
    assert shape_of(goal, TOOLS) == ("simple", "one short question: one agent answers it directly")


@pytest.mark.parametrize(
    "goal",
    [
        "What is 2 to the 10th?",  # a number: maybe the calculator
        "What time is it now?",  # the clock
        "What is the weather in Paris?",  # a word of a tool's description
        "Hello. What is the capital of France?",  # two sentences
        "Say hello",  # not a question
        "Why does a very long question with many many words in it, like this one, go to the"
        " model rather than being answered directly?",
    ],
)
def test_anything_less_clear_is_left_to_the_model(goal: str) -> None:
    assert shape_of(goal, TOOLS) is None


def test_a_goal_listing_several_parts_is_complex() -> None:
    goal = (
        "Write a short guide to starting a vegetable garden: pick a site, prepare the soil,"
        " choose three easy vegetables, and plan watering."
    )
    assert shape_of(goal, TOOLS) == (
        "complex",
        "the goal lists several parts: a plan gives each part a task",
    )


def test_the_plan_schema_bounds_the_tasks_by_the_session_limit() -> None:
    assert plan_schema(3)["properties"]["tasks"]["maxItems"] == 3
    assert plan_schema(12)["properties"]["tasks"]["maxItems"] == 12
    task = plan_schema(3)["properties"]["tasks"]["items"]["properties"]
    pattern = "^[A-Za-z][A-Za-z0-9_-]{0,15}$"
    assert task["id"]["pattern"] == task["depends_on"]["items"]["pattern"] == pattern
    tasks = ", ".join(f'{{"id": "t{i}", "description": "d"}}' for i in range(4))
    four = f'{{"rationale": "r", "tasks": [{tasks}]}}'
    with pytest.raises(PlanRejected, match="exceed the limit of 3"):
        parse_plan(four, max_tasks=3)


def test_built_in_agent_types_get_answer_lengths_sized_for_a_small_model() -> None:
    planner = prepare_agent(
        agents_pb2.AgentDefinition(name="p", type=agents_pb2.AGENT_TYPE_PLANNER)
    )
    assert planner.definition.generation.max_tokens == 400
    own = agents_pb2.AgentDefinition(name="q", type=agents_pb2.AGENT_TYPE_PLANNER)
    own.generation.max_tokens = 2000
    assert prepare_agent(own).definition.generation.max_tokens == 2000, "a set value stays"
