"""What every command shares: finding the mesh, the client, one-line errors, and output.

A command finds the mesh in this order: `--target`/`AGENTMESH_TARGET` and `--api-key`/
`AGENTMESH_API_KEY`; else what `agentmesh up` wrote to its data directory (`AGENTMESH_DATA_DIR`,
default `.data`): `mesh.json` (every address, while it runs) and `api-key`; else the address is
127.0.0.1:50051 (and the memory service's 127.0.0.1:50054).

Output: `--json` prints proto3 JSON (a list command an array, a show command an object); without
it a terminal gets tables, and a pipe gets tab-separated lines with full names, never cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import AgentmeshError, InvalidArgument
from agentmesh_client.status import status_code_for

from .approvals import ApprovalNeeded
from .mesh import MEMORY, ORCHESTRATOR, ServiceStartError

T = TypeVar("T")
DEFAULT_TARGET = f"127.0.0.1:{ORCHESTRATOR.default_port}"
DEFAULT_MEMORY_TARGET = f"127.0.0.1:{MEMORY.default_port}"

# Markup off: goals, agent text and server messages are data and must print as they are.
console = Console(markup=False)
errors = Console(stderr=True, soft_wrap=True)  # an error stays one line at any width

Target = Annotated[str, typer.Option(envvar="AGENTMESH_TARGET", help="orchestrator address")]
ApiKey = Annotated[str, typer.Option(envvar="AGENTMESH_API_KEY", help="API key")]
AsJson = Annotated[bool, typer.Option("--json", help="proto3 JSON instead of a table")]


class CliError(Exception):
    """A failure to report on one line."""


def default_data_dir() -> Path:
    """Where `up` keeps its state unless told otherwise: `AGENTMESH_DATA_DIR`, else `.data`."""
    return Path(os.environ.get("AGENTMESH_DATA_DIR") or ".data")


def mesh_state(data_dir: Path | None = None) -> dict[str, Any]:
    """What a running `agentmesh up` wrote to `<data dir>/mesh.json` ({} when none runs)."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(((data_dir or default_data_dir()) / "mesh.json").read_text())
        if isinstance(state, dict):
            return state
    return {}


def resolve_target(target: str) -> str:
    if target:
        return target
    return str(mesh_state().get("orchestrator") or DEFAULT_TARGET)


def resolve_memory_target(memory: str) -> str:
    if memory:
        return memory
    return str(mesh_state().get("memory") or DEFAULT_MEMORY_TARGET)


def resolve_api_key(api_key: str) -> str:
    if api_key:
        return api_key
    stored = default_data_dir() / "api-key"
    if stored.exists():
        return stored.read_text().strip()
    raise CliError("no API key: pass --api-key, set AGENTMESH_API_KEY, or run `agentmesh up`")


def one_line(exc: BaseException) -> str:
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


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` and return the exit to raise (2: a usage error)."""
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a failure prints one line and exits 1."""
    try:
        return asyncio.run(coroutine)
    except (
        AgentmeshError,
        grpc.aio.AioRpcError,
        CliError,
        ServiceStartError,
        ApprovalNeeded,
    ) as exc:
        raise fail(one_line(exc), 1) from None


async def with_client(
    target: str, api_key: str, use: Callable[[AgentmeshClient], Awaitable[T]]
) -> T:
    async with AgentmeshClient(resolve_target(target), api_key=resolve_api_key(api_key)) as client:
        return await use(client)


def go(target: str, api_key: str, use: Callable[[AgentmeshClient], Awaitable[T]]) -> T:
    """Run `use` with a client of the mesh this command finds."""
    return run(with_client(target, api_key, use))


def enum_value(enum: Any, prefix: str, value: str, option: str) -> Any:
    """`running` -> `SESSION_STATUS_RUNNING`'s number; "" -> 0; a bad value exits with usage."""
    if not value:
        return 0
    try:
        return enum.Value(prefix + value.upper().replace("-", "_"))
    except ValueError:
        names = enum.keys()  # an EnumTypeWrapper is not iterable
        choices = [n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED")]
        raise fail(f"{option} must be one of {', '.join(choices)}") from None


def parse_pairs(pairs: list[str] | None, option: str = "--meta") -> dict[str, str]:
    """KEY=VALUE options as a dict; a malformed one exits with usage."""
    found: dict[str, str] = {}
    for pair in pairs or []:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise fail(f"{option} takes KEY=VALUE, not {pair!r}")
        found[key] = value
    return found


def full_name(collection: str, name: str) -> str:
    """`abc` -> `sessions/abc`; a full name stays as it is."""
    return name if name.startswith(f"{collection}/") else f"{collection}/{name}"


# -- output ------------------------------------------------------------------------------------


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message)


def print_json(value: object) -> None:
    """JSON on stdout, whole (never wrapped): proto messages as proto3 JSON."""
    if isinstance(value, Message):
        value = as_dict(value)
    elif isinstance(value, list | tuple):
        value = [as_dict(v) if isinstance(v, Message) else v for v in value]
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def print_rows(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    keep_whole: Sequence[str] = (),
) -> None:
    """A table on a terminal; tab-separated lines (a header, then one row a line) on a pipe, so
    that names copied into other commands are whole. `keep_whole` columns never wrap."""
    if not console.is_terminal:
        for line in (columns, *rows):
            print("\t".join(" ".join(cell.split()) for cell in line))
        return
    table = Table(title=title)
    for column in columns:
        if column in keep_whole:
            table.add_column(column, no_wrap=True, overflow="fold")
        else:
            table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_text(text: str) -> None:
    """Text on stdout as it is (YAML, JSON): the console would wrap it at its width."""
    print(text, end="" if text.endswith("\n") else "\n", flush=True)
