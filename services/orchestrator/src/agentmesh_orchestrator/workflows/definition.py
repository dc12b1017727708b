"""A workflow definition checked once and compiled: rules parsed, mappings and schedules
checked, every fault named by its field path (all of them, not just the first).

What is refused (INVALID_ARGUMENT): ids that are not `[a-z][a-z0-9_-]{0,62}` or repeat, a
transition from or to a place that does not exist or from no place at all, a rule that does
not parse, a mapping path that cannot work, a goal template with an unknown variable, a time
or count out of bounds, an auto transition that cannot leave the place agent's place. What is
allowed with a warning: a place no token can reach from the initial place.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from agentmesh.common.v1 import generation_pb2
from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_common import FieldViolation, InvalidArgument

from .mapping import BUILT_IN_VARIABLES, Violation, check_input_mapping, check_output_mapping
from .rules import Rule, RuleError, parse

ID = re.compile(r"[a-z][a-z0-9_-]{0,62}")
AGENT_NAME = re.compile(r"agents/[a-z0-9][a-z0-9-]{0,62}")
RULE_ROOTS = ("data", "metadata")
DEFAULT_GOAL = "Process token {token_id} in {current_place}: {input_data}"
DEFAULT_TIMEOUT = timedelta(seconds=300)
MAX_TIMEOUT = timedelta(hours=24)
MAX_BACKOFF = timedelta(hours=1)
MAX_DELAY = timedelta(days=30)
MIN_INTERVAL = timedelta(seconds=1)
MAX_ATTEMPTS = 10
MAX_EXECUTIONS = 10_000
MAX_PLACES = 200
MAX_TRANSITIONS = 500
MAX_PLACE_AGENTS = 100
MAX_RULES = 32
MAX_GOAL_CHARS = 8000
DEFAULT_RETRY_ON = frozenset({workflow_pb2.RETRY_ON_TIMEOUT, workflow_pb2.RETRY_ON_RATE_LIMIT})


@dataclass(frozen=True)
class Retry:
    max_attempts: int
    backoff: timedelta
    retry_on: frozenset[int]

    def delay_before(self, attempt: int) -> timedelta:
        """The wait before `attempt` (2 is the first retry): backoff, doubled each time."""
        doubled: timedelta = self.backoff * (2 ** max(attempt - 2, 0))
        return min(doubled, MAX_BACKOFF)


@dataclass(frozen=True)
class Execution:
    agent: str
    input_mapping: Mapping[str, str]
    output_mapping: Mapping[str, str]
    required: bool
    timeout: timedelta
    retry: Retry
    goal: str


@dataclass(frozen=True)
class CompiledTransition:
    id: str
    from_places: frozenset[str]
    to_place: str
    rules: tuple[Rule, ...]
    execution: Execution | None


@dataclass(frozen=True)
class CompiledPlaceAgent:
    id: str
    place: str
    execution: Execution
    trigger_rules: tuple[Rule, ...]
    auto_transition: str
    initial_delay: timedelta
    interval: timedelta | None
    max_executions: int
    generation: generation_pb2.GenerationConfig | None = None


@dataclass(frozen=True)
class CompiledWorkflow:
    places: tuple[str, ...]
    initial_place: str
    transitions: Mapping[str, CompiledTransition]
    place_agents: Mapping[str, CompiledPlaceAgent]
    warnings: tuple[str, ...]

    def agents_at(self, place: str) -> list[CompiledPlaceAgent]:
        return [agent for agent in self.place_agents.values() if agent.place == place]


@dataclass
class _Checker:
    violations: list[Violation] = field(default_factory=list)

    def add(self, at: str, message: str) -> None:
        self.violations.append(Violation(at, message))

    def extend(self, violations: Iterable[Violation]) -> None:
        self.violations.extend(violations)

    def ids(self, items: Iterable[tuple[int, str]], at: str, kind: str) -> set[str]:
        seen: set[str] = set()
        for index, item_id in items:
            if not ID.fullmatch(item_id):
                self.add(f"{at}[{index}].id", f"{item_id!r} is not a {kind} id ({ID.pattern})")
            elif item_id in seen:
                self.add(f"{at}[{index}].id", f"{kind} {item_id!r} is defined twice")
            seen.add(item_id)
        return seen

    def rules(self, texts: Iterable[str], at: str) -> tuple[Rule, ...]:
        parsed = []
        texts = list(texts)
        if len(texts) > MAX_RULES:
            self.add(at, f"at most {MAX_RULES} rules")
        for index, text in enumerate(texts):
            try:
                parsed.append(parse(text, RULE_ROOTS))
            except RuleError as error:
                self.add(f"{at}[{index}]", str(error))
        return tuple(parsed)

    def duration(
        self, value: timedelta, at: str, *, low: timedelta, high: timedelta, what: str
    ) -> None:
        if not low <= value <= high:
            self.add(at, f"{what} must be between {_human(low)} and {_human(high)}")


def compile_workflow(workflow: workflow_pb2.Workflow, at: str = "workflow") -> CompiledWorkflow:
    """The compiled definition, or InvalidArgument listing every fault by field path."""
    check = _Checker()
    if not workflow.places:
        check.add(f"{at}.places", "a workflow needs at least one place")
    if len(workflow.places) > MAX_PLACES:
        check.add(f"{at}.places", f"at most {MAX_PLACES} places")
    places = check.ids(((i, p.id) for i, p in enumerate(workflow.places)), f"{at}.places", "place")
    initial = workflow.initial_place or (workflow.places[0].id if workflow.places else "")
    if workflow.initial_place and workflow.initial_place not in places:
        check.add(f"{at}.initial_place", f"no place {workflow.initial_place!r}")
    if len(workflow.transitions) > MAX_TRANSITIONS:
        check.add(f"{at}.transitions", f"at most {MAX_TRANSITIONS} transitions")
    check.ids(
        ((i, t.id) for i, t in enumerate(workflow.transitions)), f"{at}.transitions", "transition"
    )
    transitions: dict[str, CompiledTransition] = {}
    for index, transition in enumerate(workflow.transitions):
        compiled = _transition(check, transition, places, f"{at}.transitions[{index}]")
        transitions.setdefault(transition.id, compiled)
    if len(workflow.place_agents) > MAX_PLACE_AGENTS:
        check.add(f"{at}.place_agents", f"at most {MAX_PLACE_AGENTS} place agents")
    agent_ids = ((i, a.id) for i, a in enumerate(workflow.place_agents))
    check.ids(agent_ids, f"{at}.place_agents", "place agent")
    place_agents: dict[str, CompiledPlaceAgent] = {}
    for index, agent in enumerate(workflow.place_agents):
        where = f"{at}.place_agents[{index}]"
        compiled_agent = _place_agent(check, agent, places, transitions, where)
        place_agents.setdefault(agent.id, compiled_agent)
    if check.violations:
        first = check.violations[0]
        raise InvalidArgument(
            f"{first.field}: {first.message}"
            + (f" (and {len(check.violations) - 1} more)" if len(check.violations) > 1 else ""),
            violations=[FieldViolation(v.field, v.message) for v in check.violations],
        )
    ordered = tuple(p.id for p in workflow.places)
    return CompiledWorkflow(
        places=ordered,
        initial_place=initial,
        transitions=transitions,
        place_agents=place_agents,
        warnings=tuple(_unreachable(ordered, initial, transitions.values())),
    )


def _transition(
    check: _Checker, transition: workflow_pb2.Transition, places: set[str], at: str
) -> CompiledTransition:
    if not transition.from_places:
        check.add(f"{at}.from_places", "a transition needs at least one place to fire from")
    for index, place in enumerate(transition.from_places):
        if place not in places:
            check.add(f"{at}.from_places[{index}]", f"no place {place!r}")
    if transition.to_place not in places:
        check.add(f"{at}.to_place", f"no place {transition.to_place!r}")
    rules = check.rules(transition.rules, f"{at}.rules")
    execution = (
        _execution(check, transition.agent_execution, f"{at}.agent_execution")
        if transition.HasField("agent_execution")
        else None
    )
    return CompiledTransition(
        id=transition.id,
        from_places=frozenset(transition.from_places),
        to_place=transition.to_place,
        rules=rules,
        execution=execution,
    )


def _place_agent(
    check: _Checker,
    agent: workflow_pb2.PlaceAgent,
    places: set[str],
    transitions: Mapping[str, CompiledTransition],
    at: str,
) -> CompiledPlaceAgent:
    if agent.place not in places:
        check.add(f"{at}.place", f"no place {agent.place!r}")
    if not agent.HasField("execution"):
        check.add(f"{at}.execution", "required: the agent to run")
    execution = _execution(check, agent.execution, f"{at}.execution")
    if agent.auto_transition:
        target = transitions.get(agent.auto_transition)
        if target is None:
            check.add(f"{at}.auto_transition", f"no transition {agent.auto_transition!r}")
        elif agent.place in places and agent.place not in target.from_places:
            check.add(
                f"{at}.auto_transition",
                f"transition {agent.auto_transition!r} does not fire from place {agent.place!r}",
            )
    schedule = agent.schedule
    initial_delay = schedule.initial_delay.ToTimedelta()
    check.duration(
        initial_delay,
        f"{at}.schedule.initial_delay",
        low=timedelta(0),
        high=MAX_DELAY,
        what="initial_delay",
    )
    interval = schedule.interval.ToTimedelta() if schedule.HasField("interval") else None
    if interval is not None:
        check.duration(
            interval, f"{at}.schedule.interval", low=MIN_INTERVAL, high=MAX_DELAY, what="interval"
        )
    if not 0 <= schedule.max_executions <= MAX_EXECUTIONS:
        check.add(f"{at}.schedule.max_executions", f"must be between 0 and {MAX_EXECUTIONS}")
    max_executions = schedule.max_executions or (0 if interval is not None else 1)
    return CompiledPlaceAgent(
        id=agent.id,
        place=agent.place,
        execution=execution,
        trigger_rules=check.rules(agent.trigger_rules, f"{at}.trigger_rules"),
        auto_transition=agent.auto_transition,
        initial_delay=initial_delay,
        interval=interval,
        max_executions=max_executions,
        generation=agent.generation if agent.HasField("generation") else None,
    )


def _execution(check: _Checker, execution: workflow_pb2.AgentExecution, at: str) -> Execution:
    if not AGENT_NAME.fullmatch(execution.agent):
        check.add(f"{at}.agent", f"{execution.agent!r} is not of the form 'agents/{{agent_id}}'")
    check.extend(check_input_mapping(execution.input_mapping, f"{at}.input_mapping"))
    check.extend(check_output_mapping(execution.output_mapping, f"{at}.output_mapping"))
    timeout = execution.timeout.ToTimedelta() if execution.HasField("timeout") else DEFAULT_TIMEOUT
    check.duration(
        timeout, f"{at}.timeout", low=timedelta(seconds=1), high=MAX_TIMEOUT, what="timeout"
    )
    retry = execution.retry
    if not 0 <= retry.max_attempts <= MAX_ATTEMPTS:
        check.add(f"{at}.retry.max_attempts", f"must be between 0 and {MAX_ATTEMPTS}")
    backoff = retry.backoff.ToTimedelta()
    check.duration(
        backoff, f"{at}.retry.backoff", low=timedelta(0), high=MAX_BACKOFF, what="backoff"
    )
    for index, kind in enumerate(retry.retry_on):
        if kind not in workflow_pb2.RetryOn.values() or kind == workflow_pb2.RETRY_ON_UNSPECIFIED:
            check.add(f"{at}.retry.retry_on[{index}]", f"unknown kind of failure {kind}")
    goal = execution.goal or DEFAULT_GOAL
    _check_goal(check, goal, set(execution.input_mapping), f"{at}.goal")
    return Execution(
        agent=execution.agent,
        input_mapping=dict(execution.input_mapping),
        output_mapping=dict(execution.output_mapping),
        required=execution.required,
        timeout=timeout,
        retry=Retry(
            max_attempts=max(retry.max_attempts, 1),
            backoff=backoff,
            retry_on=frozenset(retry.retry_on) or DEFAULT_RETRY_ON,
        ),
        goal=goal,
    )


def render_goal(goal: str, variables: Mapping[str, str]) -> str:
    """Fill a goal template checked by compile_workflow (so every variable is present)."""
    return "".join(
        literal + (variables.get(name, "") if name is not None else "")
        for literal, name, _, _ in string.Formatter().parse(goal)
    )


def _check_goal(check: _Checker, goal: str, mapped: set[str], at: str) -> None:
    for fault in goal_faults(goal, mapped | set(BUILT_IN_VARIABLES)):
        check.add(at, fault)


def goal_faults(goal: str, known: set[str]) -> list[str]:
    """What is wrong with a goal template whose variables must be among `known`."""
    if len(goal) > MAX_GOAL_CHARS:
        return [f"at most {MAX_GOAL_CHARS} characters"]
    try:
        pieces = list(string.Formatter().parse(goal))
    except ValueError as error:
        return [f"malformed template: {error}"]
    return [
        f"unknown variable {{{name}}}; the run has {', '.join(sorted(known))}"
        for _, name, spec, conversion in pieces
        if name is not None and (name not in known or spec or conversion)
    ]


def _unreachable(
    places: tuple[str, ...], initial: str, transitions: Iterable[CompiledTransition]
) -> list[str]:
    edges: dict[str, set[str]] = {}
    for transition in transitions:
        for source in transition.from_places:
            edges.setdefault(source, set()).add(transition.to_place)
    reached = {initial}
    queue = deque([initial])
    while queue:
        for target in edges.get(queue.popleft(), ()):
            if target not in reached:
                reached.add(target)
                queue.append(target)
    return [
        f"place {place!r} cannot be reached from the initial place {initial!r}; only tokens "
        "created there will be in it"
        for place in places
        if place not in reached
    ]


def _human(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
