"""Workflow and schedule files: YAML that reads like the seed's examples.

A workflow file is the `Workflow` message (field names as in the proto, durations as "300s")
plus an `id`, with shorthands: a place may be just its id; a transition's `from` and `to` stand
for `from_places` (a list or one place) and `to_place`; `agent` stands for `agent_execution`
(a place agent's for `execution`), and in it `input` and `output` for the mappings; an agent
may be named without `agents/`; `retry_on` takes `timeout`, `rate_limit`, `unavailable`,
`failed`.

    id: document-review
    places: [submitted, reviewed]
    transitions:
      - id: ai_review
        from: submitted
        to: reviewed
        agent:
          agent: content-reviewer
          input: {document_content: data.content}
          output: {data.review_result: assessment}
          required: true
          timeout: 300s
          retry: {max_attempts: 3, backoff: 10s, retry_on: [timeout, rate_limit]}

A schedule file is the `Schedule` message plus an `id`; `every` stands for `interval` and
`session` for `session_template` (whose agents may be bare ids and whose `strategy` may be
`round-robin`, `pipeline`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf.json_format import ParseDict, ParseError

from agentmesh.workflow.v1 import schedule_pb2, workflow_pb2

from .shared import CliError
from .teams import STRATEGIES

_RETRY_ON = {"timeout", "rate_limit", "unavailable", "failed"}


def load_workflow(path: Path) -> tuple[str, workflow_pb2.Workflow]:
    """The workflow id and definition of a workflow file."""
    document = _mapping(path)
    workflow_id = str(document.pop("id", ""))
    document["places"] = [
        {"id": place} if isinstance(place, str) else place for place in document.get("places", [])
    ]
    for transition in document.get("transitions", []):
        _rename(transition, "from", "from_places")
        _rename(transition, "to", "to_place")
        if isinstance(transition.get("from_places"), str):
            transition["from_places"] = [transition["from_places"]]
        _rename(transition, "agent", "agent_execution")
        if "agent_execution" in transition:
            _execution(transition["agent_execution"])
    for agent in document.get("place_agents", []):
        _rename(agent, "agent", "execution")
        if "execution" in agent:
            _execution(agent["execution"])
    return workflow_id, _parse(document, workflow_pb2.Workflow(), path)


def load_schedule(path: Path) -> tuple[str, schedule_pb2.Schedule]:
    """The schedule id and definition of a schedule file."""
    document = _mapping(path)
    schedule_id = str(document.pop("id", ""))
    _rename(document, "every", "interval")
    _rename(document, "session", "session_template")
    template = document.get("session_template")
    if isinstance(template, dict):
        template["agents"] = [_agent_name(name) for name in template.get("agents", [])]
        strategy = template.get("strategy")
        if isinstance(strategy, str) and strategy in STRATEGIES:
            template["strategy"] = STRATEGIES[strategy]
    return schedule_id, _parse(document, schedule_pb2.Schedule(), path)


def _execution(execution: Any) -> None:
    if not isinstance(execution, dict):
        return
    _rename(execution, "input", "input_mapping")
    _rename(execution, "output", "output_mapping")
    if isinstance(execution.get("agent"), str):
        execution["agent"] = _agent_name(execution["agent"])
    retry = execution.get("retry")
    if isinstance(retry, dict) and isinstance(retry.get("retry_on"), list):
        retry["retry_on"] = [
            f"RETRY_ON_{kind.upper()}" if kind in _RETRY_ON else kind for kind in retry["retry_on"]
        ]


def _agent_name(name: object) -> object:
    if isinstance(name, str) and not name.startswith("agents/"):
        return f"agents/{name}"
    return name


def _rename(item: Any, short: str, full: str) -> None:
    if isinstance(item, dict) and short in item and full not in item:
        item[full] = item.pop(short)


def _mapping(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict):
        raise CliError(f"{path}: expected a mapping with an `id`")
    return document


def _parse(document: dict[str, Any], message: Any, path: Path) -> Any:
    try:
        return ParseDict(document, message)
    except ParseError as exc:
        raise CliError(f"{path}: {exc}") from None
