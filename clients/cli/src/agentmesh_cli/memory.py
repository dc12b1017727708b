"""`agentmesh memory list|get|put|delete` (and `memory stats`, in knowledge.py) and
`agentmesh settings show|set`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from agentmesh.common.v1 import agents_pb2, user_settings_pb2
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.knowledge import MEMORY_TYPES

from .shared import (
    ApiKey,
    AsJson,
    Target,
    console,
    enum_value,
    fail,
    go,
    parse_pairs,
    print_json,
    print_text,
)

memory_app = typer.Typer(no_args_is_help=True, help="Read and write agent memory.")
settings_app = typer.Typer(no_args_is_help=True, help="User settings.")
MemoryTypeOption = Annotated[str, typer.Option("--type", help="short_term, long_term or episodic")]


def _memory_type(value: str) -> agents_pb2.MemoryType.ValueType:
    """`--type` as a MemoryType; a bad value exits with usage."""
    chosen = MEMORY_TYPES.get(value.lower().replace("-", "_"))
    if chosen is None:
        raise fail(f"--type must be one of {', '.join(MEMORY_TYPES)}")
    return chosen


@memory_app.command("list")
def memory_list(
    agent: str,
    user: str = "default",
    kind: MemoryTypeOption = "",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """An agent's memories for a user ("-": every user), of one type with --type."""
    chosen = _memory_type(kind) if kind else agents_pb2.MEMORY_TYPE_UNSPECIFIED

    async def use(client: AgentmeshClient) -> None:
        entries = await client.list_memories(f"agents/{agent}/users/{user}", type=chosen)
        if as_json:
            print_json(entries)
            return
        for entry in entries:
            value = json.dumps(MessageToDict(entry.value))
            console.print(f"{entry.name.rsplit('/', 1)[-1]} = {value}")

    go(target, api_key, use)


@memory_app.command("get")
def memory_get(
    agent: str,
    key: str,
    user: str = "default",
    as_json: Annotated[
        bool, typer.Option("--json", help="the whole entry, not only its value")
    ] = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """One memory entry's value (JSON)."""

    async def use(client: AgentmeshClient) -> None:
        entry = await client.get_memory(f"agents/{agent}/users/{user}/memories/{key}")
        if as_json:
            print_json(entry)
        else:
            print_text(json.dumps(MessageToDict(entry.value)))

    go(target, api_key, use)


@memory_app.command("put")
def memory_put(
    agent: str,
    key: str,
    value: Annotated[str, typer.Argument(help="a JSON value")],
    user: str = "default",
    ttl: Annotated[float | None, typer.Option(help="seconds to live")] = None,
    kind: MemoryTypeOption = "long_term",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Write a memory entry (long-term unless --type says otherwise)."""
    chosen = _memory_type(kind)
    try:
        parsed = ParseDict(json.loads(value), struct_pb2.Value())
    except (ValueError, ParseError) as exc:
        raise fail(f"VALUE is not JSON: {exc}") from None

    async def use(client: AgentmeshClient) -> None:
        entry = await client.put_memory(
            f"agents/{agent}/users/{user}/memories/{key}", parsed, ttl_seconds=ttl, type=chosen
        )
        console.print(f"stored {entry.name}")

    go(target, api_key, use)


@memory_app.command("delete")
def memory_delete(
    agent: str,
    key: str,
    user: str = "default",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Delete a memory entry."""

    async def use(client: AgentmeshClient) -> None:
        await client.delete_memory(f"agents/{agent}/users/{user}/memories/{key}")
        console.print("deleted")

    go(target, api_key, use)


@settings_app.command("show")
def settings_show(
    user: str = "default", as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """A user's settings."""

    async def use(client: AgentmeshClient) -> None:
        settings = await client.get_user_settings(user)
        if as_json:
            print_json(settings)
        else:
            print_text(yaml.safe_dump(MessageToDict(settings), sort_keys=False) or "{}")

    go(target, api_key, use)


@settings_app.command("set")
def settings_set(
    default_route: Annotated[str, typer.Option(help="route for agents that name none")] = "",
    preference: Annotated[str, typer.Option(help="local or online")] = "",
    archive: Annotated[
        list[str] | None,
        typer.Option(help="a collection research agents search by default (repeatable)"),
    ] = None,
    default_model: Annotated[
        list[str] | None,
        typer.Option(help="AGENT_TYPE=ROUTE or AGENT_TYPE=PROVIDER/MODEL (repeatable)"),
    ] = None,
    user: str = "default",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Change a user's settings (only the options given)."""
    settings = user_settings_pb2.UserSettings(name=f"users/{user}/settings")
    fields: list[str] = []
    if archive:
        settings.rag_archives.extend(a.removeprefix("collections/") for a in archive)
        fields.append("rag_archives")
    if default_model:
        settings.default_models.update(parse_pairs(default_model, "--default-model"))
        fields.append("default_models")
    if default_route:
        settings.default_route = default_route
        fields.append("default_route")
    if preference:
        settings.model_preference = enum_value(
            user_settings_pb2.ModelPreference, "MODEL_PREFERENCE_", preference, "--preference"
        )
        fields.append("model_preference")

    async def use(client: AgentmeshClient) -> None:
        stored = await client.update_user_settings(settings, fields=fields)
        print_text(yaml.safe_dump(MessageToDict(stored), sort_keys=False))

    go(target, api_key, use)
