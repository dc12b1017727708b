"""Client calls for what agents know: collections and documents, search, memory statistics and
search, agent statistics. Part of `AgentmeshClient` (a mixin over its stub and deadline)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from agentmesh.common.v1 import agents_pb2, knowledge_pb2, memory_entries_pb2, stats_pb2
from agentmesh.orchestrator.v1 import knowledge_pb2 as kpb
from agentmesh.orchestrator.v1 import orchestrator_pb2_grpc

from .status import from_rpc_error

__all__ = ["KnowledgeCalls"]

T = TypeVar("T")
PART_BYTES = 1024 * 1024
UPLOAD_TIMEOUT = 300.0


class KnowledgeCalls:
    """Collections, documents and search; memory and agent statistics."""

    _stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
    _metadata: tuple[tuple[str, str], ...]
    _call: Callable[..., Awaitable[Any]]

    async def create_collection(
        self, collection_id: str, *, display_name: str = "", description: str = ""
    ) -> knowledge_pb2.Collection:
        reply = await self._call(
            self._stub.CreateCollection,
            kpb.CreateCollectionRequest(
                collection_id=collection_id,
                collection=knowledge_pb2.Collection(
                    display_name=display_name, description=description
                ),
                request_id=uuid.uuid4().hex,
            ),
        )
        return reply.collection  # type: ignore[no-any-return]

    async def get_collection(self, name: str) -> knowledge_pb2.Collection:
        reply = await self._call(self._stub.GetCollection, kpb.GetCollectionRequest(name=name))
        return reply.collection  # type: ignore[no-any-return]

    async def list_collections(self) -> list[knowledge_pb2.Collection]:
        found: list[knowledge_pb2.Collection] = []
        token = ""
        while True:
            reply = await self._call(
                self._stub.ListCollections,
                kpb.ListCollectionsRequest(page_size=1000, page_token=token),
            )
            found.extend(reply.collections)
            token = reply.next_page_token
            if not token:
                return found

    async def delete_collection(self, name: str) -> None:
        await self._call(
            self._stub.DeleteCollection,
            kpb.DeleteCollectionRequest(name=name, request_id=uuid.uuid4().hex),
        )

    async def upload_document(
        self,
        collection: str,
        data: bytes,
        *,
        display_name: str = "",
        document_id: str = "",
        document_format: knowledge_pb2.DocumentFormat.ValueType = (
            knowledge_pb2.DOCUMENT_FORMAT_UNSPECIFIED
        ),
        metadata: Mapping[str, str] | None = None,
        chunk_chars: int = 0,
        overlap_chars: int = 0,
    ) -> knowledge_pb2.Document:
        """Stream a document into `collection` ("collections/{id}") in 1 MiB parts."""

        async def parts() -> AsyncIterator[kpb.UploadDocumentRequest]:
            yield kpb.UploadDocumentRequest(
                header=kpb.DocumentUpload(
                    parent=collection,
                    document_id=document_id,
                    document=knowledge_pb2.Document(
                        display_name=display_name,
                        format=document_format,
                        metadata=dict(metadata or {}),
                    ),
                    chunking=knowledge_pb2.ChunkingOptions(
                        chunk_chars=chunk_chars, overlap_chars=overlap_chars
                    ),
                    request_id=uuid.uuid4().hex,
                )
            )
            for start in range(0, len(data), PART_BYTES):
                yield kpb.UploadDocumentRequest(data=data[start : start + PART_BYTES])

        try:
            reply = await self._stub.UploadDocument(
                parts(), metadata=self._metadata, timeout=UPLOAD_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return reply.document

    async def get_document(self, name: str) -> knowledge_pb2.Document:
        reply = await self._call(self._stub.GetDocument, kpb.GetDocumentRequest(name=name))
        return reply.document  # type: ignore[no-any-return]

    async def list_documents(self, collection: str) -> list[knowledge_pb2.Document]:
        found: list[knowledge_pb2.Document] = []
        token = ""
        while True:
            reply = await self._call(
                self._stub.ListDocuments,
                kpb.ListDocumentsRequest(parent=collection, page_size=1000, page_token=token),
            )
            found.extend(reply.documents)
            token = reply.next_page_token
            if not token:
                return found

    async def delete_document(self, name: str) -> None:
        await self._call(
            self._stub.DeleteDocument,
            kpb.DeleteDocumentRequest(name=name, request_id=uuid.uuid4().hex),
        )

    async def search_documents(
        self,
        query: str,
        *,
        parent: str = "collections/-",
        collections: Sequence[str] = (),
        documents: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        any_term: bool = False,
        page_size: int = 10,
        page_token: str = "",
    ) -> kpb.SearchDocumentsResponse:
        """Passages for `query`, most relevant first, with citations and highlighted snippets."""
        return await self._call(  # type: ignore[no-any-return]
            self._stub.SearchDocuments,
            kpb.SearchDocumentsRequest(
                parent=parent,
                query=query,
                collections=collections,
                documents=documents,
                metadata=dict(metadata or {}),
                mode=(
                    knowledge_pb2.SEARCH_MODE_ANY_TERM
                    if any_term
                    else knowledge_pb2.SEARCH_MODE_ALL_TERMS
                ),
                page_size=page_size,
                page_token=page_token,
            ),
        )

    async def search_memories(
        self, parent: str, query: str, *, page_size: int = 10
    ) -> list[memory_entries_pb2.MemoryEntry]:
        reply = await self._call(
            self._stub.SearchMemories,
            kpb.SearchMemoriesRequest(parent=parent, query=query, page_size=page_size),
        )
        return list(reply.entries)

    async def memory_stats(self, parent: str) -> kpb.GetMemoryStatsResponse:
        """Every row of `parent` ("agents/{a}/users/{u}", "-" for any), with the total."""
        rows: list[stats_pb2.MemoryStats] = []
        token = ""
        while True:
            reply = await self._call(
                self._stub.GetMemoryStats,
                kpb.GetMemoryStatsRequest(parent=parent, page_size=1000, page_token=token),
            )
            rows.extend(reply.stats)
            token = reply.next_page_token
            if not token:
                return kpb.GetMemoryStatsResponse(stats=rows, total=reply.total)

    async def agent_stats(
        self,
        agent: str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> stats_pb2.AgentStats:
        request = kpb.GetAgentStatsRequest(agent=agent)
        if since is not None:
            request.start_time.FromDatetime(since)
        if until is not None:
            request.end_time.FromDatetime(until)
        reply = await self._call(self._stub.GetAgentStats, request)
        return reply.stats  # type: ignore[no-any-return]


# The memory types by the names the command line uses.
MEMORY_TYPES: dict[str, agents_pb2.MemoryType.ValueType] = {
    "short_term": agents_pb2.MEMORY_TYPE_SHORT_TERM,
    "long_term": agents_pb2.MEMORY_TYPE_LONG_TERM,
    "episodic": agents_pb2.MEMORY_TYPE_EPISODIC,
}
