"""`agentmesh models|providers|tools|usage` and `agentmesh keys create`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agentmesh.common.v1 import operations_pb2
from agentmesh_client.client import AgentmeshClient

from .mesh import create_api_key
from .shared import (
    ApiKey,
    AsJson,
    Target,
    enum_value,
    go,
    print_json,
    print_rows,
    resolve_memory_target,
    run,
)

keys_app = typer.Typer(no_args_is_help=True, help="Tenant API keys (operators).")


def models(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Routes and the models behind them."""

    async def use(client: AgentmeshClient) -> None:
        found = await client.list_models()
        if as_json:
            print_json(found)
            return
        print_rows(
            ("route", "deployments (fallback order)", "context"),
            [
                (m.route, " → ".join(m.deployments), str(m.context_window_tokens or ""))
                for m in found
            ],
        )

    go(target, api_key, use)


def _lower(enum: Any, prefix: str, value: int) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def providers(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Health and circuit state of every deployment."""

    async def use(client: AgentmeshClient) -> None:
        found = await client.provider_status()
        if as_json:
            print_json(found)
            return
        print_rows(
            ("route", "deployment", "health", "circuit", "rpm left", "tpm left"),
            [
                (
                    s.route,
                    f"{s.provider}/{s.model}",
                    _lower(operations_pb2.DeploymentHealth, "DEPLOYMENT_HEALTH_", s.health),
                    _lower(operations_pb2.CircuitState, "CIRCUIT_STATE_", s.circuit_state),
                    "∞" if s.rpm_remaining < 0 else str(s.rpm_remaining),
                    "∞" if s.tpm_remaining < 0 else str(s.tpm_remaining),
                )
                for s in found
            ],
        )

    go(target, api_key, use)


def usage(
    by: Annotated[str, typer.Option(help="tenant, provider, model, agent or session")] = "tenant",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Tokens and spend of your tenant (sessions, and calls through the gateway's HTTP API)."""
    group_by = enum_value(operations_pb2.UsageGrouping, "USAGE_GROUPING_", by, "--by")

    async def use(client: AgentmeshClient) -> None:
        reply = await client.usage(group_by=group_by)
        if as_json:
            print_json(reply)
            return
        print_rows(
            (by, "calls", "prompt", "completion", "cost (USD)"),
            [
                (
                    row.key or "-",
                    str(row.calls),
                    str(row.usage.prompt_tokens),
                    str(row.usage.completion_tokens),
                    f"{row.usage.cost_micros_usd / 1e6:.6f}",
                )
                for row in reply.rows
            ],
            title="usage",
        )

    go(target, api_key, use)


def tools(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Tools agents can be given."""

    async def use(client: AgentmeshClient) -> None:
        found = await client.list_tools()
        if as_json:
            print_json(found)
            return
        print_rows(
            ("tool", "permission", "source", "description"),
            [
                (
                    t.spec.name,
                    "read-only" if t.spec.permission == 1 else "read-write",
                    t.source,
                    t.spec.description,
                )
                for t in found
            ],
        )

    go(target, api_key, use)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    name: Annotated[str, typer.Option(help="a label")] = "",
    memory: Annotated[
        str,
        typer.Option(
            help="memory service address [default: the one in mesh.json, else 127.0.0.1:50054]"
        ),
    ] = "",
) -> None:
    """Create an API key for a tenant (talks to the memory service; shown once). The tenant has
    the per-tenant rate limits."""
    secret = run(create_api_key(resolve_memory_target(memory), tenant, name))
    print(secret)
