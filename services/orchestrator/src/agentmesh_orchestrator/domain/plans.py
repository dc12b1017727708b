"""Plans a planner agent writes: parsed from the model's text, validated, and scheduled.

The planner answers with JSON matching `PLAN_SCHEMA` (sent to the gateway as the response
schema). `parse_plan` accepts the JSON bare or inside a Markdown code fence, validates it
against the schema, then checks what a schema cannot: unique task ids, dependencies and
parents that exist, no cycles, and the session's bound on plan size. A task with a `parent`
is a sub-task: its parent runs after all its sub-tasks (they are added to the parent's
dependencies), so the parent's executor works from their outputs. Planners are offered
`parent` only when their agent has the "sub-tasks" capability (see `plan_schema`). Every
problem is a `PlanRejected` naming the offending part, so the strategy can ask the planner
again with the reason.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jsonschema

AGENT_TYPES = ("executor", "research", "synthesis", "validation", "critic")

_ID_PATTERN = "^[A-Za-z0-9_-]{1,32}$"  # what a stored plan may hold
_PLANNED_ID = "^[A-Za-z][A-Za-z0-9_-]{0,15}$"  # what a planner is asked to write
PLAN_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rationale", "tasks"],
    "properties": {
        # Bounded so a small model cannot ramble: constrained decoding ends each string at
        # its maxLength, and the plan fits the planner's default max_tokens.
        "rationale": {"type": "string", "maxLength": 100},
        "tasks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "description"],
                "properties": {
                    "id": {"type": "string", "pattern": _ID_PATTERN},
                    "description": {"type": "string", "minLength": 1, "maxLength": 120},
                    "agent_type": {"enum": list(AGENT_TYPES)},
                    # No uniqueItems: constrained decoding cannot enforce it, and a
                    # dependency named twice means no more than once (parse_plan drops it).
                    "depends_on": {
                        "type": "array",
                        "items": {"type": "string", "pattern": _ID_PATTERN},
                    },
                    "priority": {"type": "integer", "minimum": 0, "maximum": 100},
                    # The task this one is a part of (a sub-task); the parent runs after it.
                    "parent": {"type": "string", "pattern": _ID_PATTERN},
                },
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(PLAN_SCHEMA)


SUB_TASKS = "sub-tasks"  # the planner capability that asks for plans with sub-tasks


def plan_schema(max_tasks: int, *, sub_tasks: bool = False) -> dict[str, Any]:
    """The response schema a planner is sent: PLAN_SCHEMA with at most ``max_tasks`` tasks
    (constrained decoding stops the list there) and short ids that start with a letter.

    `parent` is offered only when `sub_tasks` (the planner has the "sub-tasks" capability):
    offered it, SmolLM2 (the embedded default) filled every task's parent with made-up ids,
    and no schema can say "the id of another task of this plan"."""
    schema = copy.deepcopy(dict(PLAN_SCHEMA))
    tasks = schema["properties"]["tasks"]
    tasks["maxItems"] = max_tasks
    task = tasks["items"]["properties"]
    task["depends_on"]["maxItems"] = max_tasks - 1
    # Short ids that start with a letter (the built-in prompt asks for t1, t2, ...):
    # constrained, SmolLM2 otherwise wrote 32-digit ids that repeated each other.
    task["id"]["pattern"] = task["depends_on"]["items"]["pattern"] = _PLANNED_ID
    if sub_tasks:
        task["parent"]["pattern"] = _PLANNED_ID
    else:
        del task["parent"]
    return schema


def numbered_plan_schema(max_tasks: int, *, sub_tasks: bool = False) -> dict[str, Any]:
    """`plan_schema` with the ids fixed by position: task i is "t<i>" and depends only on
    earlier tasks (its parent, if any, is another task). Under constrained decoding the ids
    cannot repeat, name no task or form a cycle: what a planner is sent after its ids were
    unusable (a small model repeats ids; no plain schema can forbid that)."""
    schema = plan_schema(max_tasks, sub_tasks=sub_tasks)
    tasks = schema["properties"]["tasks"]
    task = tasks.pop("items")
    ids = [f"t{i}" for i in range(1, max_tasks + 1)]
    positions = []
    for index, task_id in enumerate(ids):
        positional = copy.deepcopy(task)
        fields = positional["properties"]
        fields["id"] = {"const": task_id}
        earlier = ids[:index]
        fields["depends_on"] = {"type": "array", "items": {"enum": earlier}, "maxItems": index}
        if not earlier:
            fields["depends_on"]["maxItems"] = 0
            fields["depends_on"]["items"] = {"type": "string"}
        if sub_tasks:
            fields["parent"] = {"enum": [other for other in ids if other != task_id]}
        positions.append(positional)
    tasks["prefixItems"] = positions
    tasks["items"] = False
    return schema


_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)


class PlanRejected(ValueError):
    """The planner's answer is not a usable plan; the message says why, for the planner."""


class PlanIdsRejected(PlanRejected):
    """The plan's task ids are unusable: repeated, unknown, self-referring or cyclic."""


@dataclass(frozen=True)
class PlannedTask:
    """One task of a validated plan."""

    task_id: str
    description: str
    agent_type: str
    depends_on: tuple[str, ...]
    priority: int
    parent: str = ""


@dataclass(frozen=True)
class PlanDraft:
    """A validated plan, tasks in an order where dependencies come first."""

    rationale: str
    tasks: tuple[PlannedTask, ...]


def parse_plan(text: str, *, max_tasks: int) -> PlanDraft:
    """Parse and validate a planner's answer."""
    document = _load_json(text)
    errors = sorted(_VALIDATOR.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "plan"
        raise PlanRejected(f"{where}: {first.message}")
    raw_tasks: Sequence[Mapping[str, Any]] = document["tasks"]
    if len(raw_tasks) > max_tasks:
        raise PlanRejected(f"tasks: {len(raw_tasks)} tasks exceed the limit of {max_tasks}")
    tasks = [
        PlannedTask(
            task_id=raw["id"],
            description=raw["description"],
            agent_type=raw.get("agent_type", "executor"),
            depends_on=tuple(dict.fromkeys(raw.get("depends_on", ()))),
            priority=int(raw.get("priority", 0)),
            parent=raw.get("parent", ""),
        )
        for raw in raw_tasks
    ]
    return PlanDraft(rationale=document["rationale"], tasks=_dependency_order(_with_parts(tasks)))


def _with_parts(tasks: list[PlannedTask]) -> list[PlannedTask]:
    """Each parent also depends on its sub-tasks (a parent named but unknown is rejected)."""
    ids = {task.task_id for task in tasks}
    parts: dict[str, list[str]] = {}
    for task in tasks:
        if not task.parent:
            continue
        if task.parent == task.task_id:
            raise PlanIdsRejected(f"tasks/{task.task_id}: is its own parent")
        if task.parent not in ids:
            raise PlanIdsRejected(f"tasks/{task.task_id}: parent {task.parent!r} is no task")
        parts.setdefault(task.parent, []).append(task.task_id)
    return [
        replace(task, depends_on=tuple(dict.fromkeys((*task.depends_on, *parts[task.task_id]))))
        if task.task_id in parts
        else task
        for task in tasks
    ]


def ready_tasks(
    plan: PlanDraft, done: frozenset[str], started: frozenset[str]
) -> list[PlannedTask]:
    """Tasks not yet started whose dependencies are all done, highest priority first."""
    ready = [
        task
        for task in plan.tasks
        if task.task_id not in started and all(dep in done for dep in task.depends_on)
    ]
    return sorted(ready, key=lambda task: -task.priority)


def _load_json(text: str) -> Any:
    candidate = text.strip()
    fenced = _FENCE.search(candidate)
    if fenced is not None:
        candidate = fenced.group(1)
    try:
        return json.loads(candidate)
    except ValueError as exc:
        raise PlanRejected(f"plan: not valid JSON ({exc})") from None


def _dependency_order(tasks: list[PlannedTask]) -> tuple[PlannedTask, ...]:
    by_id: dict[str, PlannedTask] = {}
    for task in tasks:
        if task.task_id in by_id:
            raise PlanIdsRejected(f"tasks/{task.task_id}: duplicate task id")
        by_id[task.task_id] = task
    for task in tasks:
        for dep in task.depends_on:
            if dep not in by_id:
                raise PlanIdsRejected(f"tasks/{task.task_id}: depends on unknown task {dep!r}")
            if dep == task.task_id:
                raise PlanIdsRejected(f"tasks/{task.task_id}: depends on itself")
    ordered: list[PlannedTask] = []
    state: dict[str, str] = {}

    def visit(task: PlannedTask, path: tuple[str, ...]) -> None:
        if state.get(task.task_id) == "done":
            return
        if state.get(task.task_id) == "visiting":
            cycle = " -> ".join((*path[path.index(task.task_id) :], task.task_id))
            raise PlanIdsRejected(f"tasks: dependency cycle {cycle}")
        state[task.task_id] = "visiting"
        for dep in task.depends_on:
            visit(by_id[dep], (*path, task.task_id))
        state[task.task_id] = "done"
        ordered.append(task)

    for task in tasks:
        visit(task, ())
    return tuple(ordered)
