"""The `agentmesh` command line.

    agentmesh up                         start the four services on localhost (embedded default)
    agentmesh run "goal" [--agents FILE] [--strategy round-robin] [--max-rounds 3] [--json]
    agentmesh sessions list|show|watch|cancel|approve|reject
    agentmesh agents create FILE|list|show|delete
    agentmesh memory list|get|put|delete|stats, agentmesh settings show|set
    agentmesh collections create|list|show|delete, agentmesh documents upload|list|delete
    agentmesh search "QUERY", agentmesh agents stats AGENT
    agentmesh models, agentmesh providers, agentmesh tools, agentmesh keys create

The API address and key come from `--target`/`AGENTMESH_TARGET` and `--api-key`/
`AGENTMESH_API_KEY`, else from what `agentmesh up` wrote to `.data` (`mesh.json` while it runs,
`api-key`), else the address is 127.0.0.1:50051.
Errors print one line with the status and the field at fault, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
import yaml
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, MessageToJson, ParseDict, ParseError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from agentmesh.common.v1 import (
    agents_pb2,
    events_pb2,
    operations_pb2,
    sessions_pb2,
    user_settings_pb2,
)
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import AgentmeshError, InvalidArgument
from agentmesh_client.knowledge import MEMORY_TYPES
from agentmesh_client.status import status_code_for
from agentmesh_common import TENANT_METADATA_KEY

from .approvals import ApprovalNeeded, answer
from .cli_knowledge import (
    agents_stats,
    collections_app,
    documents_app,
    memory_stats,
    parse_pairs,
    search,
)
from .demo import run_demo
from .mesh import (
    GATEWAY,
    MEMORY,
    ORCHESTRATOR,
    SERVICES,
    WEB,
    ServiceProcess,
    ServiceStartError,
    start_mesh,
    stop_mesh,
)
from .render import SessionView, status_name, usage_table

T = TypeVar("T")
#: `agentmesh run` exit code after Ctrl-C cancelled the session (128 + SIGINT, as shells do).
EXIT_CANCELLED = 130
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path(".data")
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

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
sessions_app = typer.Typer(no_args_is_help=True, help="Inspect, follow and cancel sessions.")
agents_app = typer.Typer(no_args_is_help=True, help="Manage agent definitions.")
memory_app = typer.Typer(no_args_is_help=True, help="Read and write agent memory.")
settings_app = typer.Typer(no_args_is_help=True, help="User settings.")
keys_app = typer.Typer(no_args_is_help=True, help="Tenant API keys (operators).")
app.add_typer(sessions_app, name="sessions")
app.add_typer(agents_app, name="agents")
app.add_typer(memory_app, name="memory")
app.add_typer(settings_app, name="settings")
app.add_typer(keys_app, name="keys")
app.add_typer(collections_app, name="collections")
app.add_typer(documents_app, name="documents")
app.command("search")(search)
memory_app.command("stats")(memory_stats)
agents_app.command("stats")(agents_stats)
MemoryTypeOption = Annotated[str, typer.Option("--type", help="short_term, long_term or episodic")]

# Markup off: goals, agent text and server messages are data and must print as they are.
console = Console(markup=False)
errors = Console(stderr=True, soft_wrap=True)  # an error stays one line at any width

Target = Annotated[str, typer.Option(envvar="AGENTMESH_TARGET", help="orchestrator address")]
ApiKey = Annotated[str, typer.Option(envvar="AGENTMESH_API_KEY", help="API key")]
DataDir = Annotated[Path, typer.Option(help="where `up` keeps state, logs and the API key")]


class CliError(Exception):
    """A failure to report on one line."""


def _one_line(exc: BaseException) -> str:
    """`STATUS REASON: message (field: a, b)`, on one line."""
    if isinstance(exc, AgentmeshError):
        code = status_code_for(exc).name
        reason = f" {exc.reason}" if exc.reason and exc.reason != code else ""
        text = f"{code}{reason}: {exc.message}"
        if isinstance(exc, InvalidArgument) and exc.violations:
            text += f" (field: {', '.join(v.field for v in exc.violations)})"
        retry = getattr(exc, "retry_after", None)
        if retry:
            text += f" (retry in {retry:.1f}s)"
        return " ".join(text.split())
    if isinstance(exc, grpc.aio.AioRpcError):
        return " ".join(f"{exc.code().name}: {exc.details()}".split())
    return " ".join(str(exc).split())


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except (
        AgentmeshError,
        grpc.aio.AioRpcError,
        CliError,
        ServiceStartError,
        ApprovalNeeded,
    ) as exc:
        errors.print(f"[red]error:[/red] {escape(_one_line(exc))}", highlight=False)
        raise typer.Exit(1) from None


def _api_key(api_key: str, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    if api_key:
        return api_key
    stored = data_dir / "api-key"
    if stored.exists():
        return stored.read_text().strip()
    raise CliError("no API key: pass --api-key, set AGENTMESH_API_KEY, or run `agentmesh up`")


def _target(target: str, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    if target:
        return target
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads((data_dir / "mesh.json").read_text())["orchestrator"])
    return DEFAULT_TARGET


async def _with_client(
    target: str, api_key: str, use: Callable[[AgentmeshClient], Awaitable[T]]
) -> T:
    async with AgentmeshClient(_target(target), api_key=_api_key(api_key)) as client:
        return await use(client)


# -- up ----------------------------------------------------------------------------------------


async def create_api_key(memory_target: str, tenant: str, name: str) -> str:
    """Create an API key for `tenant` through the memory service; returns the secret."""
    async with grpc.aio.insecure_channel(memory_target) as channel:
        reply = await memory_pb2_grpc.MemoryServiceStub(channel).CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name=name),
            metadata=((TENANT_METADATA_KEY, tenant),),
            timeout=10,
        )
    return reply.secret


@app.command()
def up(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    port_base: Annotated[
        int | None,
        typer.Option(
            help="ports from here: gRPC orchestrator N, gateway N+1, runner N+2, memory N+3, "
            "web N+4, and the web UI's HTTP N+5 (metrics on free ports); 0 binds every port "
            "free. Default: 50051-50055 and HTTP 8080."
        ),
    ] = None,
    routes: Annotated[
        Path | None,
        typer.Option(help="routes file for the gateway (default: the local runner, SmolLM2)"),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="run an example session once the mesh is up")
    ] = False,
) -> None:
    """Start memory, local runner, gateway, orchestrator and the web edge on localhost until
    Ctrl-C.

    Writes <data-dir>/mesh.json (every address, the UI's URL, the pids, the API key file) while
    running.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if port_base is not None and not 0 <= port_base <= 65532:
        errors.print("[red]error:[/red] --port-base must be between 0 and 65532")
        raise typer.Exit(2)
    if routes is not None and not routes.is_file():
        errors.print(f"[red]error:[/red] --routes: {escape(str(routes))} is not a file")
        raise typer.Exit(2)
    _run(_up(data_dir, port_base, routes.resolve() if routes else None, demo=demo))


def mesh_layout(
    port_base: int | None, routes: Path | None
) -> tuple[dict[str, int] | None, dict[str, dict[str, str]]]:
    """The ports and extra environment `agentmesh up` gives each service."""
    extra: dict[str, dict[str, str]] = {spec.name: {} for spec in SERVICES}
    ports: dict[str, int] | None = None
    if port_base is not None:
        by_default_port = sorted(SERVICES, key=lambda spec: spec.default_port)
        ports = {
            spec.name: 0 if port_base == 0 else port_base + i
            for i, spec in enumerate(by_default_port)
        }
        for spec in SERVICES:
            extra[spec.name][f"{spec.env_prefix}METRICS_PORT"] = "0"
        http_port = 0 if port_base == 0 else port_base + len(SERVICES)
        extra[WEB.name][f"{WEB.env_prefix}HTTP_PORT"] = str(http_port)
    if routes is not None:
        extra[GATEWAY.name][f"{GATEWAY.env_prefix}ROUTES_FILE"] = str(routes)
    return ports, extra


async def _up(
    data_dir: Path, port_base: int | None, routes: Path | None, *, demo: bool = False
) -> None:
    console.print(f"starting agentmesh (data in {data_dir}) …")
    ports, extra = mesh_layout(port_base, routes)
    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    assert starting is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, starting.cancel)
    try:
        running = await start_mesh(data_dir, ports=ports, extra_env=extra)
    except asyncio.CancelledError:
        # start_mesh has stopped whatever had started.
        raise CliError("interrupted while starting; nothing is left running") from None
    state_file = data_dir / "mesh.json"
    try:
        key_file = data_dir / "api-key"
        if not key_file.exists():
            memory = next(s for s in running if s.spec is MEMORY)
            secret = await create_api_key(memory.address, "local", "agentmesh up")
            key_file.write_text(secret + "\n")
            key_file.chmod(0o600)
        state_file.write_text(json.dumps(_mesh_state(running, key_file), indent=2) + "\n")
        table = Table(title="agentmesh is up")
        for column in ("service", "address", "http", "metrics", "pid"):
            table.add_column(column)
        for service in running:
            metrics = f":{service.metrics_port}" if service.metrics_port else ""
            pid = str(service.process.pid) if service.process else ""
            http = service.http_url or ""
            table.add_row(service.spec.name, service.address, http, metrics, pid)
        console.print(table)
        console.print(f"API key (tenant local): {key_file.read_text().strip()}")
        web = next(s for s in running if s.spec is WEB)
        console.print(f"UI: {web.http_url}/  (sign in with the API key)", highlight=False)
        orchestrator = next(s for s in running if s.spec is ORCHESTRATOR)
        target = (
            ""
            if orchestrator.port == ORCHESTRATOR.default_port
            else " --target " + (orchestrator.address)
        )
        console.print(f"mesh: {state_file}  ·  logs: {data_dir / 'logs'}")
        console.print(f'try: agentmesh run{target} "Say hello"', highlight=False)
        if routes is None:
            console.print(
                "Route default is SmolLM2-135M-Instruct on the local runner: small, it answers"
                " simple questions well and reasons poorly (see the README)."
            )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        exits = [asyncio.create_task(s.process.wait()) for s in running if s.process]
        waiter = asyncio.create_task(stop.wait())
        example = (
            asyncio.create_task(_demo(orchestrator.address, key_file.read_text().strip(), stop))
            if demo
            else None
        )
        done, _ = await asyncio.wait([waiter, *exits], return_when=asyncio.FIRST_COMPLETED)
        for task in [waiter, *exits, *([example] if example else [])]:
            task.cancel()
        if waiter not in done:
            dead = [s.spec.name for s in running if s.process and s.process.returncode is not None]
            raise CliError(
                f"{', '.join(dead)} exited; stopped the mesh (logs in {data_dir / 'logs'})"
            )
    finally:
        console.print("stopping …")
        await stop_mesh(running)
        state_file.unlink(missing_ok=True)
        console.print("stopped")


async def _demo(target: str, api_key: str, stop: asyncio.Event) -> None:
    """The example session of `up --demo`; a failure is one line and the mesh keeps serving."""
    try:
        await run_demo(target, api_key, console)
    except (AgentmeshError, grpc.aio.AioRpcError) as exc:
        errors.print(f"[red]example session failed:[/red] {escape(_one_line(exc))}")
        return
    if not stop.is_set():
        console.print("agentmesh keeps running; press Ctrl-C to stop it")


def _mesh_state(running: list[ServiceProcess], key_file: Path) -> dict[str, object]:
    services = {
        s.spec.name: {
            "address": s.address,
            "metrics_port": s.metrics_port,
            "pid": s.process.pid if s.process else None,
            "http": s.http_url,
        }
        for s in running
    }
    web = next(s for s in running if s.spec is WEB)
    return {
        "orchestrator": services[ORCHESTRATOR.name]["address"],
        "memory": services[MEMORY.name]["address"],
        "web": web.http_url,
        "api_key_file": str(key_file),
        "pid": os.getpid(),
        "services": services,
        "openai_base_url": _openai_base_url(running),
    }


def _openai_base_url(running: list[ServiceProcess]) -> str | None:
    """What an OpenAI SDK is given as base URL: the gateway's HTTP API (Anthropic's: no /v1)."""
    gateway = next((s for s in running if s.spec is GATEWAY), None)
    return f"{gateway.http_url}/v1" if gateway is not None and gateway.http_url else None


# -- run ---------------------------------------------------------------------------------------


def load_agents(path: Path) -> list[agents_pb2.AgentDefinition]:
    """Agent definitions from a YAML file: a list, or a mapping with an `agents` list."""
    stored, definitions = load_team(path)
    if stored:
        raise CliError(f"{path}: {stored[0]} names a stored agent; a definition has an `id`")
    return definitions


def load_team(path: Path) -> tuple[list[str], list[agents_pb2.AgentDefinition]]:
    """A team file's members: names of stored agents (a plain string, `keeper` or
    `agents/keeper`: they have memory) and inline definitions (a mapping with an `id`)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    items = document.get("agents", []) if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise CliError(f"{path}: expected a list of agents")
    stored = [
        item if item.startswith("agents/") else f"agents/{item}"
        for item in items
        if isinstance(item, str)
    ]
    definitions = [
        _agent_from_yaml(item, f"{path}: agents[{i}]")
        for i, item in enumerate(items)
        if not isinstance(item, str)
    ]
    return stored, definitions


def load_session_spec(path: Path) -> sessions_pb2.Session:
    """How the team of a team file works (its keys besides `agents`, as the Session's fields:
    strategy, selector, handoff, pipeline, termination, limits)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
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


def _agent_from_yaml(item: object, where: str) -> agents_pb2.AgentDefinition:
    if not isinstance(item, dict) or "id" not in item:
        raise CliError(f"{where}: each agent needs an `id`")
    fields = dict(item)
    agent_id = str(fields.pop("id"))
    prompts = {
        k: fields.pop(k) for k in ("system", "user_template", "context_instructions") if k in fields
    }
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


@app.command()
def run(
    goal: Annotated[str, typer.Argument(help="what the agents should achieve")],
    strategy: Annotated[str, typer.Option(help=", ".join(STRATEGIES))] = "",
    agents: Annotated[Path | None, typer.Option(help="YAML file of agents")] = None,
    max_rounds: Annotated[int, typer.Option(help="rounds for round-robin")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one event per line")] = False,
    context: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE session metadata (repeatable): user, collection_id, document_ids, ..."
        ),
    ] = None,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Start a session for GOAL and show it live; Ctrl-C cancels it.

    The agents file may also say how the team works (strategy, selector, handoff, pipeline,
    termination, limits; see examples/). A tool call that needs approval is asked y/n on a
    terminal; without one the command stops, saying how to answer it.

    Exit code: 0 completed, 1 failed or cancelled elsewhere (or an error), 130 cancelled with
    Ctrl-C (after showing the `session_cancelled` usage).
    """
    if strategy and strategy not in STRATEGIES:
        errors.print(f"[red]error:[/red] --strategy must be one of {', '.join(STRATEGIES)}")
        raise typer.Exit(2)
    chosen = STRATEGIES.get(strategy, sessions_pb2.STRATEGY_UNSPECIFIED)
    metadata = parse_pairs(context, "--context")

    async def go(client: AgentmeshClient) -> None:
        stored, team = load_team(agents) if agents is not None else ([], [])
        spec = load_session_spec(agents) if agents is not None else sessions_pb2.Session()
        strategy = chosen or spec.strategy
        if not (team or stored) and strategy == sessions_pb2.STRATEGY_UNSPECIFIED:
            strategy = sessions_pb2.STRATEGY_ROUTER
        limits = spec.limits
        if max_rounds:
            limits.max_rounds = max_rounds
        session = await client.create_session(
            goal=goal,
            agents=stored,
            inline_agents=team,
            strategy=strategy,
            limits=limits,
            termination=spec.termination,
            pipeline=spec.pipeline,
            selector=spec.selector,
            handoff=spec.handoff,
            metadata=metadata,
        )
        await _show(client, session.name, client.run(session.name), as_json)

    _run(_with_client(target, api_key, go))


async def _show(
    client: AgentmeshClient,
    session: str,
    events: AsyncIterator[events_pb2.SessionEvent],
    as_json: bool,
    *,
    cancel_on_interrupt: bool = True,
) -> None:
    view = SessionView(session=session)
    interrupted = asyncio.Event()
    user_cancelled = False
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        with contextlib.ExitStack() as stack:
            live = (
                None
                if as_json
                else stack.enter_context(Live(view.render(), console=console, refresh_per_second=8))
            )
            iterator = events.__aiter__()
            while True:
                next_event = asyncio.ensure_future(iterator.__anext__())
                stopper = asyncio.ensure_future(interrupted.wait())
                done, _ = await asyncio.wait(
                    {next_event, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                if next_event not in done:
                    next_event.cancel()
                    if cancel_on_interrupt:
                        user_cancelled = True
                        await client.cancel_session(session)
                        iterator = client.events(session, after_seq=view.last_seq).__aiter__()
                        interrupted.clear()
                        cancel_on_interrupt = False
                        continue
                    return
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    break
                view.apply(event)
                if as_json:
                    print(MessageToJson(event, indent=None), flush=True)
                elif live is not None:
                    live.update(view.render())
                if event.HasField("approval_requested"):
                    if live is not None:
                        live.stop()  # the question needs the terminal
                    await answer(
                        client,
                        session,
                        event.approval_requested.approval,
                        interactive=sys.stdin.isatty(),
                        prompt=_ask,
                    )
                    if live is not None:
                        live.start()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if user_cancelled:
        raise typer.Exit(EXIT_CANCELLED)
    if not view.outcome.startswith("completed"):
        raise typer.Exit(1)


# -- sessions ----------------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    status: Annotated[
        str, typer.Option(help="pending, running, completed, failed, cancelled")
    ] = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Sessions, newest first."""
    wanted = _enum(sessions_pb2.SessionStatus, "SESSION_STATUS_", status, "--status")

    async def go(client: AgentmeshClient) -> None:
        table = Table()
        # Names are copied into other commands: never cut one (the goal wraps instead).
        table.add_column("session", no_wrap=True, min_width=len("sessions/") + 32)
        for column in ("status", "strategy", "goal", "tokens"):
            table.add_column(column)
        async for session in client.list_sessions(status=wanted):
            table.add_row(
                session.name,
                status_name(session.status),
                sessions_pb2.Strategy.Name(session.strategy).removeprefix("STRATEGY_").lower(),
                session.goal[:60],
                str(session.usage.total_tokens),
            )
        console.print(table)

    _run(_with_client(target, api_key, go))


@sessions_app.command("show")
def sessions_show(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """A session with its agents, tasks and usage."""

    async def go(client: AgentmeshClient) -> None:
        reply = await client.get_session(_session_name(name))
        session = reply.session
        console.print(f"{session.name}  {status_name(session.status)}", style="bold")
        console.print(f"goal: {session.goal}")
        console.print(f"agents: {', '.join(a.name for a in reply.agents) or '-'}")
        if reply.tasks:
            table = Table(title="tasks")
            for column in ("task", "status", "agent", "retries"):
                table.add_column(column)
            for task in reply.tasks:
                status = sessions_pb2.TaskStatus.Name(task.status).removeprefix("TASK_STATUS_")
                table.add_row(task.task_id, status.lower(), task.agent, str(task.retry_count))
            console.print(table)
        if session.final_answer:
            console.print(f"answer: {session.final_answer}")
        console.print(usage_table({}, session.usage))

    _run(_with_client(target, api_key, go))


@sessions_app.command("watch")
def sessions_watch(
    name: str,
    after_seq: Annotated[int, typer.Option(help="replay events after this seq")] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Replay a session's events, then follow it live."""

    async def go(client: AgentmeshClient) -> None:
        session = _session_name(name)
        await _show(
            client,
            session,
            client.events(session, after_seq=after_seq),
            as_json,
            cancel_on_interrupt=False,
        )

    _run(_with_client(target, api_key, go))


@sessions_app.command("cancel")
def sessions_cancel(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Cancel a session."""

    async def go(client: AgentmeshClient) -> None:
        session = await client.cancel_session(_session_name(name))
        console.print(f"{session.name}: {status_name(session.status)}")

    _run(_with_client(target, api_key, go))


def _enum(enum: Any, prefix: str, value: str, option: str) -> Any:
    """`running` -> `SESSION_STATUS_RUNNING`'s number; "" -> 0; a bad value exits with usage."""
    if not value:
        return 0
    try:
        return enum.Value(prefix + value.upper().replace("-", "_"))
    except ValueError:
        names = enum.keys()  # an EnumTypeWrapper is not iterable
        choices = [n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED")]
        errors.print(f"[red]error:[/red] {option} must be one of {', '.join(choices)}")
        raise typer.Exit(2) from None


async def _ask(question: str) -> str:
    """Ask on the terminal (stderr, so `--json` output stays clean); the typed line."""
    errors.print(question, end="", markup=False, highlight=False)
    return await asyncio.to_thread(sys.stdin.readline)


@sessions_app.command("approve")
def sessions_approve(
    name: str,
    approval_id: str,
    comment: Annotated[str, typer.Option(help="a note kept with the approval")] = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Approve a tool call waiting for approval (its id is in approval_requested)."""

    async def go(client: AgentmeshClient) -> None:
        approval = await client.approve_tool_call(_session_name(name), approval_id, comment=comment)
        console.print(f"{approval.name}: approved")

    _run(_with_client(target, api_key, go))


@sessions_app.command("reject")
def sessions_reject(
    name: str,
    approval_id: str,
    comment: Annotated[str, typer.Option(help="why; the model is told")] = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Reject a tool call waiting for approval: it does not run."""

    async def go(client: AgentmeshClient) -> None:
        approval = await client.reject_tool_call(_session_name(name), approval_id, comment=comment)
        console.print(f"{approval.name}: rejected")

    _run(_with_client(target, api_key, go))


def _memory_type(value: str) -> agents_pb2.MemoryType.ValueType:
    """`--type` as a MemoryType; a bad value exits with usage."""
    chosen = MEMORY_TYPES.get(value.lower().replace("-", "_"))
    if chosen is None:
        errors.print(f"[red]error:[/red] --type must be one of {', '.join(MEMORY_TYPES)}")
        raise typer.Exit(2)
    return chosen


def _session_name(name: str) -> str:
    return name if name.startswith("sessions/") else f"sessions/{name}"


# -- agents ------------------------------------------------------------------------------------


@agents_app.command("create")
def agents_create(file: Path, target: Target = "", api_key: ApiKey = "") -> None:
    """Create every agent of a YAML file."""

    async def go(client: AgentmeshClient) -> None:
        for definition in load_agents(file):
            agent_id = definition.name.removeprefix("agents/")
            created = await client.create_agent(agent_id, definition)
            console.print(f"created {created.name}")

    _run(_with_client(target, api_key, go))


@agents_app.command("list")
def agents_list(target: Target = "", api_key: ApiKey = "") -> None:
    """Agent definitions."""

    async def go(client: AgentmeshClient) -> None:
        table = Table()
        for column in ("agent", "type", "model", "tools", "description"):
            table.add_column(column)
        async for agent in client.list_agents():
            table.add_row(
                agent.name,
                agents_pb2.AgentType.Name(agent.type).removeprefix("AGENT_TYPE_").lower(),
                agent.model.route or f"{agent.model.provider}/{agent.model.model}",
                ", ".join(agent.tools),
                agent.description[:60],
            )
        console.print(table)

    _run(_with_client(target, api_key, go))


@agents_app.command("show")
def agents_show(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """An agent definition as YAML."""

    async def go(client: AgentmeshClient) -> None:
        agent = await client.get_agent(name if name.startswith("agents/") else f"agents/{name}")
        console.print(yaml.safe_dump(MessageToDict(agent), sort_keys=False))

    _run(_with_client(target, api_key, go))


@agents_app.command("delete")
def agents_delete(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Delete an agent definition."""

    async def go(client: AgentmeshClient) -> None:
        full = name if name.startswith("agents/") else f"agents/{name}"
        await client.delete_agent(full)
        console.print(f"deleted {full}")

    _run(_with_client(target, api_key, go))


# -- memory, settings, models, providers, tools, keys ------------------------------------------


@memory_app.command("list")
def memory_list(
    agent: str,
    user: str = "default",
    kind: MemoryTypeOption = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """An agent's memories for a user ("-": every user), of one type with --type."""
    chosen = _memory_type(kind) if kind else agents_pb2.MEMORY_TYPE_UNSPECIFIED

    async def go(client: AgentmeshClient) -> None:
        for entry in await client.list_memories(f"agents/{agent}/users/{user}", type=chosen):
            value = json.dumps(MessageToDict(entry.value))
            console.print(f"{entry.name.rsplit('/', 1)[-1]} = {value}")

    _run(_with_client(target, api_key, go))


@memory_app.command("get")
def memory_get(
    agent: str,
    key: str,
    user: str = "default",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """One memory entry."""

    async def go(client: AgentmeshClient) -> None:
        entry = await client.get_memory(f"agents/{agent}/users/{user}/memories/{key}")
        console.print(json.dumps(MessageToDict(entry.value)))

    _run(_with_client(target, api_key, go))


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
        errors.print(f"[red]error:[/red] VALUE is not JSON: {escape(str(exc))}")
        raise typer.Exit(2) from None

    async def go(client: AgentmeshClient) -> None:
        entry = await client.put_memory(
            f"agents/{agent}/users/{user}/memories/{key}", parsed, ttl_seconds=ttl, type=chosen
        )
        console.print(f"stored {entry.name}")

    _run(_with_client(target, api_key, go))


@memory_app.command("delete")
def memory_delete(
    agent: str,
    key: str,
    user: str = "default",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Delete a memory entry."""

    async def go(client: AgentmeshClient) -> None:
        await client.delete_memory(f"agents/{agent}/users/{user}/memories/{key}")
        console.print("deleted")

    _run(_with_client(target, api_key, go))


@settings_app.command("show")
def settings_show(user: str = "default", target: Target = "", api_key: ApiKey = "") -> None:
    """A user's settings."""

    async def go(client: AgentmeshClient) -> None:
        settings = await client.get_user_settings(user)
        console.print(yaml.safe_dump(MessageToDict(settings), sort_keys=False) or "{}")

    _run(_with_client(target, api_key, go))


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
        settings.model_preference = _enum(
            user_settings_pb2.ModelPreference, "MODEL_PREFERENCE_", preference, "--preference"
        )
        fields.append("model_preference")

    async def go(client: AgentmeshClient) -> None:
        stored = await client.update_user_settings(settings, fields=fields)
        console.print(yaml.safe_dump(MessageToDict(stored), sort_keys=False))

    _run(_with_client(target, api_key, go))


@app.command()
def models(target: Target = "", api_key: ApiKey = "") -> None:
    """Routes and the models behind them."""

    async def go(client: AgentmeshClient) -> None:
        table = Table()
        for column in ("route", "deployments (fallback order)", "context"):
            table.add_column(column)
        for model in await client.list_models():
            table.add_row(
                model.route, " → ".join(model.deployments), str(model.context_window_tokens or "")
            )
        console.print(table)

    _run(_with_client(target, api_key, go))


@app.command()
def providers(target: Target = "", api_key: ApiKey = "") -> None:
    """Health and circuit state of every deployment."""

    async def go(client: AgentmeshClient) -> None:
        table = Table()
        for column in ("route", "deployment", "health", "circuit", "rpm left", "tpm left"):
            table.add_column(column)
        for status in await client.provider_status():
            table.add_row(
                status.route,
                f"{status.provider}/{status.model}",
                operations_pb2.DeploymentHealth.Name(status.health)
                .removeprefix("DEPLOYMENT_HEALTH_")
                .lower(),
                operations_pb2.CircuitState.Name(status.circuit_state)
                .removeprefix("CIRCUIT_STATE_")
                .lower(),
                "∞" if status.rpm_remaining < 0 else str(status.rpm_remaining),
                "∞" if status.tpm_remaining < 0 else str(status.tpm_remaining),
            )
        console.print(table)

    _run(_with_client(target, api_key, go))


@app.command()
def usage(
    by: Annotated[str, typer.Option(help="tenant, provider, model, agent or session")] = "tenant",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Tokens and spend of your tenant (sessions, and calls through the gateway's HTTP API)."""
    group_by = _enum(operations_pb2.UsageGrouping, "USAGE_GROUPING_", by, "--by")

    async def go(client: AgentmeshClient) -> None:
        reply = await client.usage(group_by=group_by)
        table = Table(title="usage")
        for column in (by, "calls", "prompt", "completion", "cost (USD)"):
            table.add_column(column, justify="left" if column == by else "right")
        for row in reply.rows:
            table.add_row(
                row.key or "-",
                str(row.calls),
                str(row.usage.prompt_tokens),
                str(row.usage.completion_tokens),
                f"{row.usage.cost_micros_usd / 1e6:.6f}",
            )
        console.print(table)

    _run(_with_client(target, api_key, go))


@app.command()
def tools(target: Target = "", api_key: ApiKey = "") -> None:
    """Tools agents can be given."""

    async def go(client: AgentmeshClient) -> None:
        table = Table()
        for column in ("tool", "permission", "source", "description"):
            table.add_column(column)
        for tool in await client.list_tools():
            permission = "read-only" if tool.spec.permission == 1 else "read-write"
            table.add_row(tool.spec.name, permission, tool.source, tool.spec.description)
        console.print(table)

    _run(_with_client(target, api_key, go))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    name: Annotated[str, typer.Option(help="a label")] = "",
    memory: Annotated[str, typer.Option(help="memory service address")] = "127.0.0.1:50054",
) -> None:
    """Create an API key for a tenant (talks to the memory service; shown once)."""
    secret = _run(create_api_key(memory, tenant, name))
    print(secret)


def main() -> None:
    """Entry point of the `agentmesh` script."""
    app()


if __name__ == "__main__":
    main()
