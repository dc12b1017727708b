"""Documents for agents: the built-in `search_documents` tool and its citations.

The tool searches the passages of the documents the session may see (`DocumentScope`: the
session's `document_ids` / `collection_id` context, else the user's default RAG archives, else
every collection of the tenant) with the memory service's full-text index, in the any-word
mode that suits a question in plain language. Its result lists passages with their citation
(document, title, chunk, score, page), which reach the model as JSON, the `tool_result` event
as typed `citations`, and the session's final answer (`session_completed.citations`).

Research agents have the tool by default (`domain/agent_types.py`), and their turns begin with
a retrieval the orchestrator makes itself (`context.py`), so even a small model that never
calls tools answers from the documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict

from agentmesh.common.v1 import knowledge_pb2, tools_pb2
from agentmesh_common import AgentmeshError

from .preferences import DocumentScope
from .tools import READ_ONLY, Tool, ToolCallContext, ToolError, tool_error_of

__all__ = [
    "SEARCH_TOOL",
    "CitationLog",
    "DocumentSearch",
    "citations_of",
    "knowledge_tools",
    "passages_result",
    "render_sources",
    "search_scope",
]

SEARCH_TOOL = "search_documents"
MAX_RESULTS = 10
PASSAGE_CHARS = 1500  # of each passage, in what the model reads


class DocumentSearch(Protocol):
    """Passage search (the memory service's SearchDocuments)."""

    async def search_passages(
        self,
        tenant: str,
        query: str,
        *,
        collections: Sequence[str],
        documents: Sequence[str],
        limit: int,
    ) -> list[knowledge_pb2.Citation]:
        """The best passages for `query` (any word may match), within the scope."""
        ...


class CitationLog:
    """Passages a session's turns retrieved, each once, in the order first retrieved."""

    def __init__(self) -> None:
        self.citations: list[knowledge_pb2.Citation] = []
        self._seen: set[tuple[str, int]] = set()

    def add(self, citations: Sequence[knowledge_pb2.Citation]) -> None:
        for citation in citations:
            key = (citation.document, citation.chunk_index)
            if key not in self._seen:
                self._seen.add(key)
                self.citations.append(citation)


def search_scope(scope: DocumentScope | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(collections, documents) to search; both empty means every collection."""
    if scope is None:
        return (), ()
    return scope.collections, scope.documents


def passages_result(query: str, citations: Sequence[knowledge_pb2.Citation]) -> struct_pb2.Struct:
    """The tool's result as the model reads it: numbered passages with their sources."""
    passages = [
        {
            "ref": index,
            "document": c.document,
            "title": c.document_title,
            "chunk": c.chunk_index,
            "page": c.page,
            "score": round(c.score, 4),
            "text": c.text[:PASSAGE_CHARS],
        }
        for index, c in enumerate(citations, start=1)
    ]
    return ParseDict({"query": query, "passages": passages}, struct_pb2.Struct())


def citations_of(result: struct_pb2.Struct) -> list[knowledge_pb2.Citation]:
    """The citations in a search_documents result (for events and the final answer)."""
    found: list[knowledge_pb2.Citation] = []
    passages = result.fields.get("passages")
    if passages is None:
        return found
    for item in passages.list_value.values:
        fields = item.struct_value.fields
        found.append(
            knowledge_pb2.Citation(
                document=fields["document"].string_value if "document" in fields else "",
                document_title=fields["title"].string_value if "title" in fields else "",
                chunk_index=int(fields["chunk"].number_value) if "chunk" in fields else 0,
                page=int(fields["page"].number_value) if "page" in fields else 0,
                score=fields["score"].number_value if "score" in fields else 0.0,
                text=fields["text"].string_value if "text" in fields else "",
            )
        )
    return found


def render_sources(citations: Sequence[knowledge_pb2.Citation]) -> str:
    """Passages as a numbered list a model can cite from ("[1]")."""
    lines = ["Sources from the user's documents (cite them as [1], [2], ...):"]
    for index, c in enumerate(citations, start=1):
        where = f"{c.document_title or c.document}, passage {c.chunk_index + 1}"
        if c.page:
            where += f", page {c.page}"
        lines.append(f"[{index}] ({where}) {c.text[:PASSAGE_CHARS]}")
    return "\n".join(lines)


def knowledge_tools(search: DocumentSearch) -> dict[str, Tool]:
    """The built-in `search_documents` tool over `search`."""

    async def search_documents(
        context: ToolCallContext, arguments: struct_pb2.Struct
    ) -> struct_pb2.Struct:
        query = arguments.fields["query"].string_value if "query" in arguments.fields else ""
        if not query.strip():
            raise ToolError("INVALID_ARGUMENT", "query must name what to look for")
        if len(query) > 1000:
            raise ToolError("INVALID_ARGUMENT", "query must be at most 1000 characters")
        limit = MAX_RESULTS // 2
        if "max_results" in arguments.fields:
            limit = int(arguments.fields["max_results"].number_value)
            if not 1 <= limit <= MAX_RESULTS:
                raise ToolError("INVALID_ARGUMENT", f"max_results must be 1 to {MAX_RESULTS}")
        scope = context.scope.documents if context.scope is not None else None
        collections, documents = search_scope(scope)
        try:
            citations = await search.search_passages(
                context.tenant, query, collections=collections, documents=documents, limit=limit
            )
        except AgentmeshError as error:  # e.g. a query of common words only
            raise tool_error_of(error) from None
        return passages_result(query, citations)

    spec = tools_pb2.ToolSpec(
        name=SEARCH_TOOL,
        description=(
            "Search the user's documents for passages about a question or topic. Returns "
            "numbered passages with their document, passage number and page; cite them."
        ),
        parameters_schema=ParseDict(
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "what to look for"},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS},
                },
                "required": ["query"],
            },
            struct_pb2.Struct(),
        ),
        permission=READ_ONLY,
    )
    return {SEARCH_TOOL: Tool(spec, search_documents, cite=citations_of)}
