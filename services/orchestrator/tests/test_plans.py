"""Planner output is parsed, validated and scheduled; bad plans are rejected with a reason."""

from __future__ import annotations

import json

import pytest

from agentmesh_orchestrator.domain.plans import PlanRejected, parse_plan, plan_schema, ready_tasks

GOOD = {
    "rationale": "research first, then write",
    "tasks": [
        {
            "id": "write",
            "description": "Write it",
            "agent_type": "synthesis",
            "depends_on": ["a", "b"],
        },
        {"id": "a", "description": "Find A", "priority": 1},
        {"id": "b", "description": "Find B", "agent_type": "research", "priority": 5},
    ],
}


def test_parses_fenced_json_and_orders_dependencies_first() -> None:
    plan = parse_plan(f"Here you go:\n```json\n{json.dumps(GOOD)}\n```\n", max_tasks=10)
    order = [t.task_id for t in plan.tasks]
    assert order.index("a") < order.index("write")
    assert order.index("b") < order.index("write")
    assert plan.tasks[order.index("a")].agent_type == "executor"  # the default


def test_ready_tasks_respect_dependencies_and_priority() -> None:
    plan = parse_plan(json.dumps(GOOD), max_tasks=10)
    first = ready_tasks(plan, done=frozenset(), started=frozenset())
    assert [t.task_id for t in first] == ["b", "a"]
    assert ready_tasks(plan, done=frozenset({"a"}), started=frozenset({"a", "b"})) == []
    last = ready_tasks(plan, done=frozenset({"a", "b"}), started=frozenset({"a", "b"}))
    assert [t.task_id for t in last] == ["write"]


def _with_tasks(tasks: list[dict[str, object]]) -> str:
    return json.dumps({"rationale": "r", "tasks": tasks})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not valid JSON"),
        (json.dumps({"tasks": []}), "'rationale' is a required property"),
        (_with_tasks([]), "tasks"),
        (_with_tasks([{"id": "a", "description": "x", "agent_type": "wizard"}]), "agent_type"),
        (_with_tasks([{"id": "a b", "description": "x"}]), "tasks/0/id"),
        (
            _with_tasks([{"id": "a", "description": "x"}, {"id": "a", "description": "y"}]),
            "duplicate task id",
        ),
        (_with_tasks([{"id": "a", "description": "x", "depends_on": ["zz"]}]), "unknown task 'zz'"),
        (_with_tasks([{"id": "a", "description": "x", "depends_on": ["a"]}]), "itself"),
        (
            _with_tasks(
                [
                    {"id": "a", "description": "x", "depends_on": ["b"]},
                    {"id": "b", "description": "y", "depends_on": ["a"]},
                ]
            ),
            "dependency cycle a -> b -> a",
        ),
    ],
)
def test_rejects_unusable_plans_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(PlanRejected, match=reason.replace("(", r"\(")):
        parse_plan(text, max_tasks=10)


def test_plan_size_is_bounded() -> None:
    tasks = [{"id": f"t{i}", "description": "x"} for i in range(5)]
    with pytest.raises(PlanRejected, match="5 tasks exceed the limit of 4"):
        parse_plan(_with_tasks(tasks), max_tasks=4)


def test_a_dependency_named_twice_counts_once() -> None:
    # What SmolLM2 wrote under constrained decoding, which cannot enforce uniqueItems.
    text = _with_tasks(
        [
            {"id": "a", "description": "x"},
            {"id": "b", "description": "y", "depends_on": ["a", "a"]},
        ]
    )
    plan = parse_plan(text, max_tasks=10)
    assert [t.depends_on for t in plan.tasks] == [(), ("a",)]


def test_the_schema_sent_to_planners_asks_only_what_decoding_can_enforce() -> None:
    schema = plan_schema(4)
    tasks = schema["properties"]["tasks"]
    assert tasks["maxItems"] == 4
    assert "uniqueItems" not in json.dumps(schema)
    # Sub-tasks only for a planner with the "sub-tasks" capability (SmolLM2 made up parents).
    assert "parent" not in tasks["items"]["properties"]
    with_parts = plan_schema(4, sub_tasks=True)["properties"]["tasks"]["items"]["properties"]
    assert with_parts["parent"]["pattern"] == with_parts["id"]["pattern"]


def test_a_parent_runs_after_its_sub_tasks() -> None:
    plan = parse_plan(
        _with_tasks(
            [
                {"id": "report", "description": "Report", "depends_on": ["facts"]},
                {"id": "facts", "description": "Facts"},
                {"id": "intro", "description": "Intro", "parent": "report"},
                {"id": "body", "description": "Body", "parent": "report"},
            ]
        ),
        max_tasks=10,
    )
    tasks = {t.task_id: t for t in plan.tasks}
    assert tasks["report"].depends_on == ("facts", "intro", "body")
    assert tasks["intro"].parent == "report"
    assert [t.task_id for t in plan.tasks][-1] == "report"


@pytest.mark.parametrize(
    ("tasks", "reason"),
    [
        ([{"id": "a", "description": "A", "parent": "a"}], "is its own parent"),
        ([{"id": "a", "description": "A", "parent": "zz"}], "parent 'zz' is no task"),
        (
            [
                {"id": "a", "description": "A", "parent": "b"},
                {"id": "b", "description": "B", "depends_on": ["a"], "parent": "a"},
            ],
            "dependency cycle",
        ),
    ],
)
def test_bad_parents_are_rejected_with_the_reason(
    tasks: list[dict[str, object]], reason: str
) -> None:
    with pytest.raises(PlanRejected, match=reason):
        parse_plan(_with_tasks(tasks), max_tasks=10)
