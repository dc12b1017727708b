"""The public RPCs of collections, documents, memory search and statistics, and agent stats.

A mixin of `OrchestratorServicer` (which authenticates and rate-limits through `_tenant`):
each RPC converts the public request into the memory service's and back. `UploadDocument`
relays the client's stream as it arrives (the memory service enforces the size limit while
reading); `ImportDocument`, its unary HTTP form, sends the same parts and names its own
fields in errors (`content`, `document.*`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from agentmesh.memory.v1 import knowledge_pb2 as mkpb
from agentmesh.orchestrator.v1 import knowledge_pb2 as kpb
from agentmesh_common import FieldViolation, InvalidArgument
from agentmesh_common.interceptors import DRAIN_LIMIT_SECONDS

from .adapters.memory_client import MemoryClient

__all__ = ["KnowledgeRpcs"]

Context = Any
T = TypeVar("T")
UPLOAD_TIMEOUT = 300.0  # a large PDF: its text extraction and thousands of passages
PART_BYTES = 1024 * 1024
_IMPORT_FIELDS = {
    "header.parent": "parent",
    "header.document_id": "document_id",
    "header.request_id": "request_id",
    "header.chunking": "chunking",
    "header.document": "document",
    "data": "content",
    "header": "parent",
}


def _relayed_part(part: kpb.UploadDocumentRequest) -> mkpb.UploadDocumentRequest:
    """One part of the caller's upload as the memory service takes it."""
    kind = part.WhichOneof("part")
    if kind == "header":
        return mkpb.UploadDocumentRequest(header=_upload_header(part.header))
    if kind == "data":
        return mkpb.UploadDocumentRequest(data=part.data)
    raise InvalidArgument.for_field("part", "each message holds a header or data")


def _upload_header(header: kpb.DocumentUpload) -> mkpb.DocumentUpload:
    return mkpb.DocumentUpload(
        parent=header.parent,
        document_id=header.document_id,
        document=header.document,
        chunking=header.chunking,
        request_id=header.request_id,
    )


def _import_field(name: str) -> str:
    for internal, public in _IMPORT_FIELDS.items():
        if name == internal or name.startswith(internal + "."):
            return public + name[len(internal) :]
    return name


class KnowledgeRpcs:
    """Collections, documents, search, memory statistics and agent statistics."""

    _memory: MemoryClient
    _tenant: Callable[..., Awaitable[str]]

    async def _relay(
        self, context: Context, method: Callable[..., Awaitable[T]], request: object
    ) -> T:
        tenant = await self._tenant(context)
        return await self._memory.call(tenant, method, request)

    # -- memory and agents ---------------------------------------------------------------

    async def SearchMemories(
        self, request: kpb.SearchMemoriesRequest, context: Context
    ) -> kpb.SearchMemoriesResponse:
        reply = await self._relay(
            context,
            self._memory.stub.SearchMemories,
            mkpb.SearchMemoriesRequest(
                parent=request.parent,
                query=request.query,
                types=request.types,
                page_size=request.page_size,
            ),
        )
        return kpb.SearchMemoriesResponse(entries=reply.entries)

    async def GetMemoryStats(
        self, request: kpb.GetMemoryStatsRequest, context: Context
    ) -> kpb.GetMemoryStatsResponse:
        reply = await self._relay(
            context,
            self._memory.stub.GetMemoryStats,
            mkpb.GetMemoryStatsRequest(
                parent=request.parent, page_size=request.page_size, page_token=request.page_token
            ),
        )
        return kpb.GetMemoryStatsResponse(
            stats=reply.stats, next_page_token=reply.next_page_token, total=reply.total
        )

    async def GetAgentStats(
        self, request: kpb.GetAgentStatsRequest, context: Context
    ) -> kpb.GetAgentStatsResponse:
        internal = mkpb.GetAgentStatsRequest(agent=request.agent)
        if request.HasField("start_time"):
            internal.start_time.CopyFrom(request.start_time)
        if request.HasField("end_time"):
            internal.end_time.CopyFrom(request.end_time)
        reply = await self._relay(context, self._memory.stub.GetAgentStats, internal)
        return kpb.GetAgentStatsResponse(stats=reply.stats)

    # -- collections -----------------------------------------------------------------------

    async def CreateCollection(
        self, request: kpb.CreateCollectionRequest, context: Context
    ) -> kpb.CreateCollectionResponse:
        reply = await self._relay(
            context,
            self._memory.stub.CreateCollection,
            mkpb.CreateCollectionRequest(
                collection=request.collection,
                collection_id=request.collection_id,
                request_id=request.request_id,
            ),
        )
        return kpb.CreateCollectionResponse(collection=reply.collection)

    async def GetCollection(
        self, request: kpb.GetCollectionRequest, context: Context
    ) -> kpb.GetCollectionResponse:
        reply = await self._relay(
            context,
            self._memory.stub.GetCollection,
            mkpb.GetCollectionRequest(name=request.name),
        )
        return kpb.GetCollectionResponse(collection=reply.collection)

    async def ListCollections(
        self, request: kpb.ListCollectionsRequest, context: Context
    ) -> kpb.ListCollectionsResponse:
        reply = await self._relay(
            context,
            self._memory.stub.ListCollections,
            mkpb.ListCollectionsRequest(page_size=request.page_size, page_token=request.page_token),
        )
        return kpb.ListCollectionsResponse(
            collections=reply.collections, next_page_token=reply.next_page_token
        )

    async def DeleteCollection(
        self, request: kpb.DeleteCollectionRequest, context: Context
    ) -> kpb.DeleteCollectionResponse:
        await self._relay(
            context,
            self._memory.stub.DeleteCollection,
            mkpb.DeleteCollectionRequest(name=request.name, request_id=request.request_id),
        )
        return kpb.DeleteCollectionResponse()

    # -- documents -------------------------------------------------------------------------

    async def UploadDocument(
        self, request_iterator: AsyncIterator[kpb.UploadDocumentRequest], context: Context
    ) -> kpb.UploadDocumentResponse:
        tenant = await self._tenant(context)
        relay: asyncio.Queue[mkpb.UploadDocumentRequest | None] = asyncio.Queue(maxsize=4)

        async def parts() -> AsyncIterator[mkpb.UploadDocumentRequest]:
            while (part := await relay.get()) is not None:
                yield part

        upload = asyncio.create_task(
            self._memory.call(
                tenant, self._memory.stub.UploadDocument, parts(), deadline_seconds=UPLOAD_TIMEOUT
            )
        )

        async def read() -> None:
            """The caller's stream, checked part by part, into the relay, until its end or
            until the upload has failed (the server's error mapping drops the rest)."""
            async for part in request_iterator:
                if upload.done():
                    return
                await relay.put(_relayed_part(part))
            await relay.put(None)

        # The caller's stream is read here, not by grpc's writer of the memory call: a bad
        # part there would only cancel that call and leave this one waiting for its deadline.
        reader = asyncio.create_task(read())
        try:
            await asyncio.wait({reader, upload}, return_when=asyncio.FIRST_EXCEPTION)
            if reader.done() and (error := reader.exception()) is not None:
                raise error
            if upload.done() and upload.exception() is not None:
                # Let the reader stop between two parts, not in the middle of reading one
                # (that would end the caller's stream before it could be drained).
                while not relay.empty():
                    relay.get_nowait()
                await asyncio.wait({reader}, timeout=DRAIN_LIMIT_SECONDS)
            reply = await upload
        finally:
            for task in (reader, upload):
                task.cancel()
            await asyncio.gather(reader, upload, return_exceptions=True)
        return kpb.UploadDocumentResponse(document=reply.document)

    async def ImportDocument(
        self, request: kpb.ImportDocumentRequest, context: Context
    ) -> kpb.ImportDocumentResponse:
        tenant = await self._tenant(context)
        header = mkpb.DocumentUpload(
            parent=request.parent,
            document_id=request.document_id,
            document=request.document,
            chunking=request.chunking,
            request_id=request.request_id,
        )

        def parts() -> Iterable[mkpb.UploadDocumentRequest]:
            yield mkpb.UploadDocumentRequest(header=header)
            content = request.content
            for start in range(0, len(content), PART_BYTES):
                yield mkpb.UploadDocumentRequest(data=content[start : start + PART_BYTES])

        try:
            reply = await self._memory.call(
                tenant, self._memory.stub.UploadDocument, parts(), deadline_seconds=UPLOAD_TIMEOUT
            )
        except InvalidArgument as error:
            violations = [
                FieldViolation(_import_field(v.field), v.description) for v in error.violations
            ]
            message = error.message
            for violation, renamed in zip(error.violations, violations, strict=True):
                message = message.replace(violation.field, renamed.field, 1)
            raise InvalidArgument(message, violations=violations, reason=error.reason) from None
        return kpb.ImportDocumentResponse(document=reply.document)

    async def GetDocument(
        self, request: kpb.GetDocumentRequest, context: Context
    ) -> kpb.GetDocumentResponse:
        reply = await self._relay(
            context, self._memory.stub.GetDocument, mkpb.GetDocumentRequest(name=request.name)
        )
        return kpb.GetDocumentResponse(document=reply.document)

    async def ListDocuments(
        self, request: kpb.ListDocumentsRequest, context: Context
    ) -> kpb.ListDocumentsResponse:
        reply = await self._relay(
            context,
            self._memory.stub.ListDocuments,
            mkpb.ListDocumentsRequest(
                parent=request.parent, page_size=request.page_size, page_token=request.page_token
            ),
        )
        return kpb.ListDocumentsResponse(
            documents=reply.documents, next_page_token=reply.next_page_token
        )

    async def DeleteDocument(
        self, request: kpb.DeleteDocumentRequest, context: Context
    ) -> kpb.DeleteDocumentResponse:
        await self._relay(
            context,
            self._memory.stub.DeleteDocument,
            mkpb.DeleteDocumentRequest(name=request.name, request_id=request.request_id),
        )
        return kpb.DeleteDocumentResponse()

    async def SearchDocuments(
        self, request: kpb.SearchDocumentsRequest, context: Context
    ) -> kpb.SearchDocumentsResponse:
        reply = await self._relay(
            context,
            self._memory.stub.SearchDocuments,
            mkpb.SearchDocumentsRequest(
                parent=request.parent,
                query=request.query,
                collections=request.collections,
                documents=request.documents,
                metadata=request.metadata,
                mode=request.mode,
                page_size=request.page_size,
                page_token=request.page_token,
                highlight_start=request.highlight_start,
                highlight_end=request.highlight_end,
            ),
        )
        return kpb.SearchDocumentsResponse(
            results=reply.results, next_page_token=reply.next_page_token
        )
