"""`agentmesh collections|documents|search`, `agentmesh memory stats`, `agentmesh agents stats`.

    agentmesh collections create ID [--name N] | list | show ID | delete ID
    agentmesh documents upload COLLECTION FILE... [--meta K=V] | list COLLECTION | show NAME
                        | delete NAME
    agentmesh search "QUERY" [--collection ID] [--any] [--meta K=V] [--limit 10]
    agentmesh memory stats AGENT [--user U]      (AGENT "-" for every agent)
    agentmesh agents stats AGENT [--since 24h]

The commands are registered on the main app by `cli.py`. Every list and show takes `--json`.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer

from agentmesh.common.v1 import agents_pb2
from agentmesh_client.client import AgentmeshClient

from .shared import (
    ApiKey,
    AsJson,
    CliError,
    Target,
    as_dict,
    console,
    fail,
    full_name,
    go,
    parse_pairs,
    print_json,
    print_rows,
)

__all__ = [
    "agents_stats",
    "collections_app",
    "documents_app",
    "memory_stats",
    "search",
]

collections_app = typer.Typer(no_args_is_help=True, help="Collections of documents to search.")
documents_app = typer.Typer(no_args_is_help=True, help="Documents of a collection.")

Pairs = Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE (repeatable)")]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def _collection(name: str) -> str:
    return full_name("collections", name)


# -- collections -------------------------------------------------------------------------------


@collections_app.command("create")
def collections_create(
    collection_id: str,
    name: Annotated[str, typer.Option(help="display name")] = "",
    description: str = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Create a collection."""

    async def use(client: AgentmeshClient) -> None:
        created = await client.create_collection(
            collection_id, display_name=name, description=description
        )
        console.print(f"created {created.name}")

    go(target, api_key, use)


@collections_app.command("list")
def collections_list(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Collections with their documents, passages and size."""

    async def use(client: AgentmeshClient) -> None:
        found = await client.list_collections()
        if as_json:
            print_json(found)
            return
        print_rows(
            ("collection", "name", "documents", "passages", "bytes"),
            [
                (
                    c.name,
                    c.display_name,
                    str(c.document_count),
                    str(c.chunk_count),
                    str(c.size_bytes),
                )
                for c in found
            ],
            keep_whole=("collection",),
        )

    go(target, api_key, use)


@collections_app.command("show")
def collections_show(
    collection: str, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """A collection and its documents."""

    async def use(client: AgentmeshClient) -> None:
        found = await client.get_collection(_collection(collection))
        if as_json:
            documents = await client.list_documents(found.name)
            print_json({"collection": as_dict(found), "documents": [as_dict(d) for d in documents]})
            return
        console.print(
            f"{found.name} {found.display_name!r}: {found.document_count} documents, "
            f"{found.chunk_count} passages, {found.size_bytes} bytes"
        )
        for document in await client.list_documents(found.name):
            console.print(f"  {document.name}  {document.title}")

    go(target, api_key, use)


@collections_app.command("delete")
def collections_delete(collection: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Delete a collection with its documents."""

    async def use(client: AgentmeshClient) -> None:
        await client.delete_collection(_collection(collection))
        console.print(f"deleted {_collection(collection)}")

    go(target, api_key, use)


# -- documents ---------------------------------------------------------------------------------


@documents_app.command("upload")
def documents_upload(
    collection: str,
    files: Annotated[list[Path], typer.Argument(help="text, Markdown, HTML or PDF files")],
    meta: Pairs = None,
    chunk_chars: Annotated[int, typer.Option(help="characters per passage (0: 1200)")] = 0,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Upload files into a collection (each is one document, named by its file)."""
    metadata = parse_pairs(meta)

    async def use(client: AgentmeshClient) -> None:
        for path in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror}") from None
            document = await client.upload_document(
                _collection(collection),
                data,
                display_name=path.name,
                metadata=metadata,
                chunk_chars=chunk_chars,
            )
            console.print(
                f"{document.name}: {document.chunk_count} passages, {document.size_bytes} bytes"
            )

    go(target, api_key, use)


@documents_app.command("list")
def documents_list(
    collection: str, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """Documents of a collection."""

    async def use(client: AgentmeshClient) -> None:
        found = await client.list_documents(_collection(collection))
        if as_json:
            print_json(found)
            return
        print_rows(
            ("document", "title", "passages", "pages", "bytes"),
            [
                (d.name, d.title, str(d.chunk_count), str(d.page_count), str(d.size_bytes))
                for d in found
            ],
            keep_whole=("document",),
        )

    go(target, api_key, use)


@documents_app.command("delete")
def documents_delete(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Delete a document and its passages."""

    async def use(client: AgentmeshClient) -> None:
        await client.delete_document(name)
        console.print(f"deleted {name}")

    go(target, api_key, use)


# -- search and statistics ---------------------------------------------------------------------


def search(
    query: Annotated[str, typer.Argument(help='words, "phrases", -excluded, OR')],
    collection: Annotated[
        list[str] | None, typer.Option(help="only this collection (repeatable)")
    ] = None,
    document: Annotated[list[str] | None, typer.Option(help="only this document")] = None,
    meta: Pairs = None,
    any_term: Annotated[bool, typer.Option("--any", help="any word may match")] = False,
    limit: Annotated[int, typer.Option(help="results (1-100)")] = 10,
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Search the passages of your documents; shows each with its source."""
    metadata = parse_pairs(meta)

    async def use(client: AgentmeshClient) -> None:
        reply = await client.search_documents(
            query,
            collections=[_collection(c) for c in collection or []],
            documents=document or [],
            metadata=metadata,
            any_term=any_term,
            page_size=limit,
        )
        if as_json:
            print_json(reply)
            return
        if not reply.results:
            console.print("no passages found")
        for rank, result in enumerate(reply.results, start=1):
            c = result.citation
            page = f", page {c.page}" if c.page else ""
            console.print(
                f"[{rank}] {c.document} (passage {c.chunk_index + 1}{page}, score {c.score:.3f})"
            )
            console.print(f"    {' '.join(result.snippet.split())}")

    go(target, api_key, use)


def memory_stats(
    agent: Annotated[str, typer.Argument(help='agent id, or "-" for every agent')],
    user: Annotated[str, typer.Option(help='user id, or "-" for every user')] = "-",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Memory usage per agent and user: entries and bytes by type, reads, last access."""
    types = {v: k.removeprefix("MEMORY_TYPE_").lower() for k, v in agents_pb2.MemoryType.items()}

    async def use(client: AgentmeshClient) -> None:
        reply = await client.memory_stats(f"agents/{agent}/users/{user}")
        if as_json:
            print_json(reply)
            return
        table: list[tuple[str, ...]] = []
        rows = [(row.agent.removeprefix("agents/"), row.user, row) for row in reply.stats]
        for agent_name, user_id, row in [*rows, ("(total)", "", reply.total)]:
            by_type = ", ".join(f"{types[t.type]} {t.entries}" for t in row.by_type)
            last = (
                row.last_access_time.ToDatetime().isoformat(timespec="seconds")
                if row.HasField("last_access_time")
                else "-"
            )
            table.append(
                (
                    agent_name,
                    user_id,
                    str(row.entries),
                    str(row.bytes),
                    str(row.reads),
                    by_type,
                    last,
                )
            )
        print_rows(("agent", "user", "entries", "bytes", "reads", "by type", "last access"), table)

    go(target, api_key, use)


def agents_stats(
    agent: Annotated[str, typer.Argument(help="agent id")],
    since: Annotated[str, typer.Option(help="window, e.g. 30m, 24h, 7d (default: all)")] = "",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """An agent's sessions, turns, tokens, cost, latency p50/p95, errors, last activity."""
    start: dt.datetime | None = None
    if since:
        found = _DURATION.fullmatch(since)
        if found is None:
            raise fail("--since takes a number and s, m, h or d, e.g. 24h")
        seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)

    async def use(client: AgentmeshClient) -> None:
        name = agent if agent.startswith("agents/") else f"agents/{agent}"
        stats = await client.agent_stats(name, since=start)
        if as_json:
            print_json(stats)
            return
        last = (
            stats.last_active_time.ToDatetime().isoformat(timespec="seconds")
            if stats.HasField("last_active_time")
            else "never"
        )
        for label, value in (
            ("agent", stats.agent),
            ("sessions", stats.sessions),
            ("turns", stats.turns),
            ("model calls", stats.model_calls),
            ("tokens", stats.usage.total_tokens),
            ("cost (USD)", f"{stats.usage.cost_micros_usd / 1e6:.6f}"),
            ("latency p50", f"{stats.latency_p50.ToMilliseconds()} ms"),
            ("latency p95", f"{stats.latency_p95.ToMilliseconds()} ms"),
            ("errors", stats.errors),
            ("last active", last),
        ):
            console.print(f"{label:>12}: {value}")

    go(target, api_key, use)
