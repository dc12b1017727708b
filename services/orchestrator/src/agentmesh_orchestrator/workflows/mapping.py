"""Input and output mappings between a workflow token and an agent run.

An **input mapping** names template variables and the token path each one reads
(`{"document_content": "data.content", "priority": "metadata.priority"}`). Every agent run
also gets the variables the seed names: `{input_data}` (the token's data as JSON),
`{token_id}`, `{current_place}`, `{token_metadata}` (JSON), `{workflow_id}` and
`{history_count}`. A string is passed as it is, anything else as compact JSON, a missing path
as "".

An **output mapping** names token paths (under `data.` or `metadata.`) and what to write there:
a field of the agent's structured output (`assessment`, `scores.total`, or `output.text` to
reach a field whose name is one of the words below), or one of `text` (the answer as written),
`agent_id`, `session_id` and `timestamp` (when the run finished, RFC 3339 UTC). A field the
output lacks is an error: the run did not produce what the workflow needs.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .rules import Json, lookup

TOKEN_ROOTS = ("data", "metadata")
BUILT_IN_VARIABLES = (
    "input_data",
    "token_id",
    "current_place",
    "token_metadata",
    "workflow_id",
    "history_count",
)
RUN_FIELDS = ("text", "agent_id", "session_id", "timestamp")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PART = r"[A-Za-z0-9_]+"
_TOKEN_PATH = re.compile(rf"(?:data|metadata)(?:\.{_PART})*")
_OUTPUT_PATH = re.compile(rf"{_NAME}(?:\.{_PART})*")
_VARIABLE = re.compile(_NAME)


@dataclass(frozen=True)
class Violation:
    """A mapping entry that cannot work: `field` is its path in the request."""

    field: str
    message: str


class MappingError(Exception):
    """An output mapping that could not be applied to a run's result."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"output mapping {target!r}: {message}")
        self.target = target


@dataclass(frozen=True)
class TokenView:
    """What a mapping may read of a token."""

    workflow_id: str
    token_id: str
    place: str
    data: dict[str, Json]
    metadata: dict[str, Json]
    history_count: int

    def scope(self) -> dict[str, Json]:
        return {"data": self.data, "metadata": self.metadata}


@dataclass(frozen=True)
class RunResult:
    """What an agent run produced, as an output mapping sees it."""

    agent_id: str
    session_id: str
    text: str
    finished_at: datetime
    output: dict[str, Json] | None = None


@dataclass
class TokenChanges:
    """The token's data and metadata after an output mapping (copies; the token is untouched
    until the transition commits)."""

    data: dict[str, Json] = field(default_factory=dict)
    metadata: dict[str, Json] = field(default_factory=dict)


def check_input_mapping(mapping: Mapping[str, str], at: str) -> list[Violation]:
    """Violations of an input mapping declared at field path `at`."""
    violations = []
    for variable, path in mapping.items():
        if not _VARIABLE.fullmatch(variable):
            violations.append(Violation(f"{at}", f"{variable!r} is not a variable name"))
        elif variable in BUILT_IN_VARIABLES:
            violations.append(Violation(f"{at}[{variable}]", "is a built-in variable"))
        if not _TOKEN_PATH.fullmatch(path):
            violations.append(
                Violation(f"{at}[{variable}]", f"{path!r} is not a path under data. or metadata.")
            )
    return violations


def check_output_mapping(mapping: Mapping[str, str], at: str) -> list[Violation]:
    """Violations of an output mapping declared at field path `at`."""
    violations = []
    for target, source in mapping.items():
        if not _TOKEN_PATH.fullmatch(target) or target in TOKEN_ROOTS:
            violations.append(
                Violation(at, f"{target!r} is not a field path under data. or metadata.")
            )
        if not _OUTPUT_PATH.fullmatch(source):
            violations.append(
                Violation(f"{at}[{target}]", f"{source!r} is not an output field or run field")
            )
    return violations


def input_variables(mapping: Mapping[str, str], token: TokenView) -> dict[str, str]:
    """The template variables an agent run gets for `token`."""
    variables = {
        "input_data": _render(token.data),
        "token_id": token.token_id,
        "current_place": token.place,
        "token_metadata": _render(token.metadata),
        "workflow_id": token.workflow_id,
        "history_count": str(token.history_count),
    }
    scope = token.scope()
    for variable, path in mapping.items():
        found, value = lookup(scope, path.split("."))
        variables[variable] = _render(value) if found else ""
    return variables


def apply_output(mapping: Mapping[str, str], result: RunResult, token: TokenView) -> TokenChanges:
    """The token's data and metadata with `result` written where `mapping` says."""
    changes = TokenChanges(data=copy.deepcopy(token.data), metadata=copy.deepcopy(token.metadata))
    roots: dict[str, dict[str, Json]] = {"data": changes.data, "metadata": changes.metadata}
    for target, source in sorted(mapping.items()):
        value = _source_value(target, source, result)
        root, *parts = target.split(".")
        _assign(roots[root], parts, value, target)
    return changes


def _source_value(target: str, source: str, result: RunResult) -> Json:
    run_fields: dict[str, Json] = {
        "text": result.text,
        "agent_id": result.agent_id,
        "session_id": result.session_id,
        "timestamp": result.finished_at.isoformat().replace("+00:00", "Z"),
    }
    if source in run_fields:
        return run_fields[source]
    parts = source.split(".")
    if parts[0] == "output" and len(parts) > 1:
        parts = parts[1:]
    if result.output is None:
        raise MappingError(target, f"the run gave no structured output to read {source!r} from")
    found, value = lookup(result.output, parts)
    if not found:
        raise MappingError(target, f"the run's output has no field {source!r}")
    return copy.deepcopy(value)


def _assign(root: dict[str, Json], parts: list[str], value: Json, target: str) -> None:
    node = root
    for index, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            above = ".".join([target.split(".")[0], *parts[: index + 1]])
            raise MappingError(target, f"{above} holds a value that is not an object")
        node = child
    node[parts[-1]] = value


def _render(value: Json) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
