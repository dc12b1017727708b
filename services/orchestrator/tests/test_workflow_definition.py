"""Checking and compiling workflow definitions (issue 14): every fault named by field path."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.workflows.definition import (
    DEFAULT_GOAL,
    compile_workflow,
    render_goal,
)
from agentmesh_orchestrator.workflows.engine import added_agents_work

# The seed's two examples, as one workflow: a reviewed transition and a classifying place agent.
SEED: dict[str, Any] = {
    "displayName": "Document review",
    "places": [
        {"id": "submitted"},
        {"id": "reviewed"},
        {"id": "pending_classification"},
        {"id": "categorized"},
    ],
    "initialPlace": "submitted",
    "transitions": [
        {
            "id": "ai_review",
            "fromPlaces": ["submitted"],
            "toPlace": "reviewed",
            "agentExecution": {
                "agent": "agents/content-reviewer",
                "inputMapping": {
                    "document_content": "data.content",
                    "document_type": "metadata.type",
                    "priority": "metadata.priority",
                },
                "outputMapping": {
                    "data.review_result": "assessment",
                    "data.review_score": "confidence_score",
                    "metadata.reviewer": "agent_id",
                    "metadata.review_timestamp": "timestamp",
                },
                "required": True,
                "timeout": "300s",
                "retry": {
                    "maxAttempts": 3,
                    "backoff": "10s",
                    "retryOn": ["RETRY_ON_TIMEOUT", "RETRY_ON_RATE_LIMIT"],
                },
            },
        },
        {
            "id": "classify",
            "fromPlaces": ["reviewed"],
            "toPlace": "pending_classification",
            "rules": ["data.review_score >= 0.5"],
        },
        {
            "id": "move_to_categorized",
            "fromPlaces": ["pending_classification"],
            "toPlace": "categorized",
        },
    ],
    "placeAgents": [
        {
            "id": "classifier",
            "place": "pending_classification",
            "execution": {
                "agent": "agents/content-classifier",
                "inputMapping": {"content": "data.content", "content_type": "metadata.type"},
                "outputMapping": {
                    "data.classification": "category",
                    "data.confidence": "confidence_score",
                    "metadata.classifier": "agent_id",
                    "metadata.classified_at": "timestamp",
                },
                "goal": "Classify {content} ({content_type}) of token {token_id}",
                "retry": {"maxAttempts": 2, "backoff": "15s"},
            },
            "generation": {"temperature": 0.1, "maxTokens": 200},
            "triggerRules": ["exists(data.content)", 'metadata.status == "unclassified"'],
            "autoTransition": "move_to_categorized",
            "schedule": {"initialDelay": "5s", "maxExecutions": 1},
        }
    ],
}


def workflow(changes: dict[str, Any] | None = None, **edits: Any) -> workflow_pb2.Workflow:
    document = copy.deepcopy(SEED)
    document.update(changes or {})
    for path, value in edits.items():
        _set(document, path.split("__"), value)
    return ParseDict(document, workflow_pb2.Workflow())


def _set(document: Any, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        document = document[int(part)] if part.isdigit() else document[part]
    last = path[-1]
    if last.isdigit():
        document[int(last)] = value
    else:
        document[last] = value


def test_the_seed_examples_compile() -> None:
    compiled = compile_workflow(workflow())
    assert compiled.initial_place == "submitted"
    review = compiled.transitions["ai_review"]
    assert review.execution is not None
    assert review.execution.required is True
    assert review.execution.timeout == timedelta(seconds=300)
    assert review.execution.retry.max_attempts == 3
    assert review.execution.goal == DEFAULT_GOAL
    assert [str(p) for p in compiled.transitions["classify"].rules[0].paths] == [
        "data.review_score"
    ]
    classifier = compiled.place_agents["classifier"]
    assert classifier.initial_delay == timedelta(seconds=5)
    assert classifier.interval is None
    assert classifier.max_executions == 1
    assert [a.id for a in compiled.agents_at("pending_classification")] == ["classifier"]
    assert compiled.warnings == ()


def test_retry_backoff_doubles_up_to_an_hour() -> None:
    retry = compile_workflow(workflow()).transitions["ai_review"].execution
    assert retry is not None
    delays = [retry.retry.delay_before(attempt) for attempt in (2, 3, 4)]
    assert delays == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)]
    assert retry.retry.delay_before(30) == timedelta(hours=1)


def test_an_unreachable_place_is_a_warning() -> None:
    document = workflow()
    document.places.add(id="archive")
    compiled = compile_workflow(document)
    assert len(compiled.warnings) == 1
    assert "'archive' cannot be reached" in compiled.warnings[0]


@pytest.mark.parametrize(
    ("edits", "field", "message"),
    [
        ({"places": []}, "workflow.places", "at least one place"),
        ({"places__1__id": "Reviewed"}, "workflow.places[1].id", "is not a place id"),
        ({"places__1__id": "submitted"}, "workflow.places[1].id", "defined twice"),
        ({"initialPlace": "start"}, "workflow.initial_place", "no place 'start'"),
        ({"transitions__0__fromPlaces": []}, "workflow.transitions[0].from_places", "at least"),
        (
            {"transitions__0__fromPlaces": ["nowhere"]},
            "workflow.transitions[0].from_places[0]",
            "no place 'nowhere'",
        ),
        ({"transitions__1__toPlace": "x"}, "workflow.transitions[1].to_place", "no place 'x'"),
        ({"transitions__2__id": "classify"}, "workflow.transitions[2].id", "defined twice"),
        (
            {"transitions__1__rules": ["data.review_score >="]},
            "workflow.transitions[1].rules[0]",
            "expected a value",
        ),
        (
            {"transitions__1__rules": ["review_score > 1"]},
            "workflow.transitions[1].rules[0]",
            "unknown name 'review_score'",
        ),
        (
            {"transitions__0__agentExecution__agent": "content-reviewer"},
            "workflow.transitions[0].agent_execution.agent",
            "is not of the form 'agents/{agent_id}'",
        ),
        (
            {"transitions__0__agentExecution__inputMapping": {"doc": "content"}},
            "workflow.transitions[0].agent_execution.input_mapping[doc]",
            "not a path under data. or metadata.",
        ),
        (
            {"transitions__0__agentExecution__outputMapping": {"review": "assessment"}},
            "workflow.transitions[0].agent_execution.output_mapping",
            "not a field path under data. or metadata.",
        ),
        (
            {"transitions__0__agentExecution__timeout": "0s"},
            "workflow.transitions[0].agent_execution.timeout",
            "between 1 s and 1 d",
        ),
        (
            {"transitions__0__agentExecution__retry": {"maxAttempts": 11}},
            "workflow.transitions[0].agent_execution.retry.max_attempts",
            "between 0 and 10",
        ),
        (
            {"transitions__0__agentExecution__retry": {"backoff": "7200s"}},
            "workflow.transitions[0].agent_execution.retry.backoff",
            "between 0 s and 1 h",
        ),
        (
            {"transitions__0__agentExecution__goal": "Review {document}"},
            "workflow.transitions[0].agent_execution.goal",
            "unknown variable {document}",
        ),
        (
            {"transitions__0__agentExecution__goal": "Review {"},
            "workflow.transitions[0].agent_execution.goal",
            "malformed template",
        ),
        ({"placeAgents__0__place": "limbo"}, "workflow.place_agents[0].place", "no place"),
        (
            {"placeAgents__0__autoTransition": "teleport"},
            "workflow.place_agents[0].auto_transition",
            "no transition 'teleport'",
        ),
        (
            {"placeAgents__0__autoTransition": "classify"},
            "workflow.place_agents[0].auto_transition",
            "does not fire from place 'pending_classification'",
        ),
        (
            {"placeAgents__0__schedule": {"interval": "0.5s"}},
            "workflow.place_agents[0].schedule.interval",
            "between 1 s and 30 d",
        ),
        (
            {"placeAgents__0__schedule": {"initialDelay": "-1s"}},
            "workflow.place_agents[0].schedule.initial_delay",
            "between 0 s and 30 d",
        ),
        (
            {"placeAgents__0__schedule": {"maxExecutions": -1}},
            "workflow.place_agents[0].schedule.max_executions",
            "between 0 and 10000",
        ),
        (
            {"placeAgents__0__triggerRules": ["exists(content)"]},
            "workflow.place_agents[0].trigger_rules[0]",
            "unknown name 'content'",
        ),
    ],
)
def test_a_fault_is_named_by_its_field_path(
    edits: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_workflow(workflow(**edits) if "__" in next(iter(edits)) else workflow(edits))
    fields = {violation.field: violation.description for violation in error.value.violations}
    assert field in fields, fields
    assert message in fields[field]
    assert str(error.value).startswith(next(iter(fields)))


def test_every_fault_is_listed_not_just_the_first() -> None:
    document = workflow()
    document.transitions[0].to_place = "nowhere"
    document.transitions[1].rules.append("((")
    document.place_agents[0].place = "limbo"
    with pytest.raises(InvalidArgument) as error:
        compile_workflow(document)
    assert [v.field for v in error.value.violations] == [
        "workflow.transitions[0].to_place",
        "workflow.transitions[1].rules[1]",
        "workflow.place_agents[0].place",
    ]
    assert "(and 2 more)" in str(error.value)


def test_a_goal_renders_the_run_variables() -> None:
    assert (
        render_goal(DEFAULT_GOAL, {"token_id": "t1", "current_place": "in", "input_data": "{}"})
        == "Process token t1 in in: {}"
    )
    assert render_goal("Literal {{braces}} and {x}", {"x": "1"}) == "Literal {braces} and 1"


def test_an_update_runs_only_place_agents_it_adds_or_moves_on_tokens_already_there() -> None:
    before = compile_workflow(workflow())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert added_agents_work(before, compile_workflow(workflow(displayName="renamed")), now) == []
    without = compile_workflow(workflow({"placeAgents": []}))
    (added,) = added_agents_work(without, before, now)
    assert added.place == "pending_classification"
    assert added.work.place_agent.place_agent == "classifier"
    assert added.work.place_agent.execution == 1
    assert added.work.due_time.ToDatetime(UTC) == now + timedelta(seconds=5)  # initial delay
    moved = compile_workflow(
        workflow(placeAgents__0__place="reviewed", placeAgents__0__autoTransition="classify")
    )
    assert [a.place for a in added_agents_work(before, moved, now)] == ["reviewed"]
    assert added_agents_work(before, without, now) == [], "a removed agent schedules nothing"
