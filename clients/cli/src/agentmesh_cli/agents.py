"""`agentmesh agents create|list|show|delete` (and `agents stats`, in knowledge.py).

`agents show NAME` prints the agents file that `agents create` reads (`--json`: proto3 JSON), so
`agentmesh agents show a > a.yaml; agentmesh agents create a.yaml` makes the same agent again.
"""

from __future__ import annotations

from pathlib import Path

import typer

from agentmesh.common.v1 import agents_pb2
from agentmesh_client.client import AgentmeshClient

from .shared import (
    ApiKey,
    AsJson,
    Target,
    console,
    full_name,
    go,
    print_json,
    print_rows,
    print_text,
)
from .teams import agent_to_yaml, load_agents

agents_app = typer.Typer(no_args_is_help=True, help="Manage agent definitions.")


@agents_app.command("create")
def agents_create(file: Path, target: Target = "", api_key: ApiKey = "") -> None:
    """Create every agent of a YAML file."""

    async def use(client: AgentmeshClient) -> None:
        for definition in load_agents(file):
            agent_id = definition.name.removeprefix("agents/")
            created = await client.create_agent(agent_id, definition)
            console.print(f"created {created.name}")

    go(target, api_key, use)


@agents_app.command("list")
def agents_list(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Agent definitions."""

    async def use(client: AgentmeshClient) -> None:
        agents = [agent async for agent in client.list_agents()]
        if as_json:
            print_json(agents)
            return
        print_rows(
            ("agent", "type", "model", "tools", "description"),
            [
                (
                    agent.name,
                    agents_pb2.AgentType.Name(agent.type).removeprefix("AGENT_TYPE_").lower(),
                    agent.model.route or f"{agent.model.provider}/{agent.model.model}",
                    ", ".join(agent.tools),
                    agent.description[:60],
                )
                for agent in agents
            ],
            keep_whole=("agent",),
        )

    go(target, api_key, use)


@agents_app.command("show")
def agents_show(
    name: str, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """An agent as the agents-file YAML that `agents create` accepts (--json: the definition)."""

    async def use(client: AgentmeshClient) -> None:
        agent = await client.get_agent(full_name("agents", name))
        if as_json:
            print_json(agent)
        else:
            print_text(agent_to_yaml(agent))

    go(target, api_key, use)


@agents_app.command("delete")
def agents_delete(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Delete an agent definition."""

    async def use(client: AgentmeshClient) -> None:
        full = full_name("agents", name)
        await client.delete_agent(full)
        console.print(f"deleted {full}")

    go(target, api_key, use)
