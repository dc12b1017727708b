"""Agents and team files (YAML): reading them for `agents create` and `run --agents`, and
writing one agent back as the same YAML for `agents show`, so that what it prints creates the
same agent again.

An agent is a mapping with an `id` and the `AgentDefinition` fields, with shorthands: `type:
planner`, `model: ROUTE`, `system:` / `user_template:` / `context_instructions:` for the prompts,
`tool_approval: read-write`. A team file is a list of agents (or stored agents' names), or a
mapping with such an `agents` list plus how the team works (strategy, selector, handoff,
pipeline, termination, limits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from agentmesh.common.v1 import agents_pb2, sessions_pb2

from .shared import CliError

__all__ = [
    "SESSION_KEYS",
    "STRATEGIES",
    "agent_to_yaml",
    "load_agents",
    "load_session_spec",
    "load_team",
]

STRATEGIES = {
    "router": sessions_pb2.STRATEGY_ROUTER,
    "planner-executor": sessions_pb2.STRATEGY_PLANNER_EXECUTOR,
    "round-robin": sessions_pb2.STRATEGY_ROUND_ROBIN,
    "pipeline": sessions_pb2.STRATEGY_PIPELINE,
    "selector": sessions_pb2.STRATEGY_SELECTOR,
    "handoff": sessions_pb2.STRATEGY_HANDOFF,
}
#: Keys of a team file (`--agents FILE`) besides `agents`: how the team works.
SESSION_KEYS = ("strategy", "selector", "handoff", "pipeline", "termination", "limits")
PROMPT_KEYS = ("system", "user_template", "context_instructions")
#: Set by the server; a file that names them would not be accepted back.
OUTPUT_ONLY = ("name", "create_time", "update_time")


def load_agents(path: Path) -> list[agents_pb2.AgentDefinition]:
    """Agent definitions from a YAML file: a list, or a mapping with an `agents` list."""
    stored, definitions = load_team(path)
    if stored:
        raise CliError(f"{path}: {stored[0]} names a stored agent; a definition has an `id`")
    return definitions


def load_team(path: Path) -> tuple[list[str], list[agents_pb2.AgentDefinition]]:
    """A team file's members: names of stored agents (a plain string, `keeper` or
    `agents/keeper`: they have memory) and inline definitions (a mapping with an `id`)."""
    document = _read(path)
    items = document.get("agents", []) if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise CliError(f"{path}: expected a list of agents")
    stored = [
        item if item.startswith("agents/") else f"agents/{item}"
        for item in items
        if isinstance(item, str)
    ]
    definitions = [
        agent_from_yaml(item, f"{path}: agents[{i}]")
        for i, item in enumerate(items)
        if not isinstance(item, str)
    ]
    return stored, definitions


def load_session_spec(path: Path) -> sessions_pb2.Session:
    """How the team of a team file works (its keys besides `agents`, as the Session's fields:
    strategy, selector, handoff, pipeline, termination, limits)."""
    document = _read(path)
    if not isinstance(document, dict):
        return sessions_pb2.Session()
    fields = {key: document[key] for key in SESSION_KEYS if key in document}
    strategy = fields.get("strategy")
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise CliError(f"{path}: strategy must be one of {', '.join(STRATEGIES)}")
        fields["strategy"] = sessions_pb2.Strategy.Name(STRATEGIES[strategy])
    try:
        return ParseDict(fields, sessions_pb2.Session())
    except ParseError as exc:
        raise CliError(f"{path}: {exc}") from None


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def agent_from_yaml(item: object, where: str) -> agents_pb2.AgentDefinition:
    if not isinstance(item, dict) or "id" not in item:
        raise CliError(f"{where}: each agent needs an `id`")
    fields = dict(item)
    agent_id = str(fields.pop("id"))
    prompts = {k: fields.pop(k) for k in PROMPT_KEYS if k in fields}
    if prompts:
        fields["prompts"] = {**fields.get("prompts", {}), **prompts}
    if isinstance(fields.get("type"), str) and not fields["type"].startswith("AGENT_TYPE_"):
        fields["type"] = "AGENT_TYPE_" + fields["type"].upper().replace("-", "_")
    if isinstance(fields.get("model"), str):
        fields["model"] = {"route": fields["model"]}
    approval = fields.get("tool_approval")
    if isinstance(approval, str) and not approval.startswith("TOOL_APPROVAL_"):
        fields["tool_approval"] = "TOOL_APPROVAL_" + approval.upper().replace("-", "_")
    try:
        definition = ParseDict(fields, agents_pb2.AgentDefinition())
    except ParseError as exc:
        raise CliError(f"{where}: {exc}") from None
    definition.name = f"agents/{agent_id}"
    return definition


def agent_to_yaml(definition: agents_pb2.AgentDefinition) -> str:
    """One agent as an agents file (a one-item list) that `agents create` reads back into the
    same definition: the shorthands where they say it all, block scalars for prompts."""
    fields = MessageToDict(definition, preserving_proto_field_name=True)
    item: dict[str, Any] = {"id": definition.name.removeprefix("agents/")}
    for key in OUTPUT_ONLY:
        fields.pop(key, None)
    if "type" in fields:
        fields["type"] = fields["type"].removeprefix("AGENT_TYPE_").lower().replace("_", "-")
    if set(fields.get("model", {})) == {"route"}:
        fields["model"] = fields["model"]["route"]
    if "tool_approval" in fields:
        approval = fields["tool_approval"].removeprefix("TOOL_APPROVAL_")
        fields["tool_approval"] = approval.lower().replace("_", "-")
    prompts = fields.pop("prompts", {})
    item.update(fields)
    item.update({key: prompts[key] for key in PROMPT_KEYS if key in prompts})
    return yaml.dump([item], Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (prompts) as `|` blocks, readable and exact."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value[:1].isspace() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _string)
