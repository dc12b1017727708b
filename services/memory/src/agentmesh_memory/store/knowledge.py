"""Collections (``collections/{id}``) and their documents
(``collections/{id}/documents/{id}``): ingestion, reads and deletes.

An upload is read to its end within the size limit, its text extracted and split into
passages off the event loop, and then stored in one transaction: the document row and every
passage (whose insert also feeds the full-text index). A bad file is INVALID_ARGUMENT naming
the document and its field, and nothing of it is stored. Deleting a document or a collection
cascades to the passages and their index entries.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import knowledge_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh_common import AlreadyExists, NotFound
from agentmesh_memory.db.tables import chunks, collections, documents
from agentmesh_memory.ingest import DocumentRejected, detect_format
from agentmesh_memory.ingest.chunking import DEFAULT_CHUNK_CHARS, DEFAULT_OVERLAP_CHARS
from agentmesh_memory.names import (
    ID_PATTERN,
    PageToken,
    check_request_id,
    invalid,
    new_id,
    page_size,
    parse_collection_name,
    parse_document_name,
    parse_loose_id,
)

from .base import StoreContext, check_text, insert_ignore, set_time
from .uploads import read_passages, read_upload

__all__ = [
    "CollectionNotFound",
    "DocumentNotFound",
    "KnowledgeStore",
    "collection_pk",
    "read_upload",
]

DEFAULT_MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
MAX_METADATA = 32
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_METADATA_VALUE = 1024


class CollectionNotFound(NotFound):
    default_reason = "COLLECTION_NOT_FOUND"


class DocumentNotFound(NotFound):
    default_reason = "DOCUMENT_NOT_FOUND"


def _collection_not_found(collection_id: str) -> CollectionNotFound:
    name = f"collections/{collection_id}"
    return CollectionNotFound(f"collection {name!r} not found", metadata={"collection": name})


def _document_not_found(name: str) -> DocumentNotFound:
    return DocumentNotFound(f"document {name!r} not found", metadata={"document": name})


async def collection_pk(conn: AsyncConnection, tenant: str, collection_id: str) -> int:
    """The row id of a tenant's collection; NOT_FOUND otherwise (also for other tenants')."""
    found = (
        await conn.execute(
            sa.select(collections.c.id).where(
                collections.c.tenant_id == tenant, collections.c.collection_id == collection_id
            )
        )
    ).scalar()
    if found is None:
        raise _collection_not_found(collection_id)
    return int(found)


def _collection_to_proto(row: Any) -> knowledge_pb2.Collection:
    collection = knowledge_pb2.Collection(
        name=f"collections/{row.collection_id}",
        display_name=row.display_name,
        description=row.description,
        document_count=int(row.document_count or 0),
        chunk_count=int(row.chunk_count or 0),
        size_bytes=int(row.size_bytes or 0),
    )
    set_time(collection.create_time, row.create_time)
    set_time(collection.update_time, row.update_time)
    return collection


def document_to_proto(row: Any, collection_id: str) -> knowledge_pb2.Document:
    document = knowledge_pb2.Document(
        name=f"collections/{collection_id}/documents/{row.document_id}",
        display_name=row.display_name,
        format=row.format,
        metadata=dict(row.metadata or {}),
        size_bytes=row.size_bytes,
        text_chars=row.text_chars,
        chunk_count=row.chunk_count,
        page_count=row.page_count,
        sha256=row.sha256,
        title=row.title,
    )
    set_time(document.create_time, row.create_time)
    return document


def _check_metadata(metadata: dict[str, str], field: str) -> None:
    if len(metadata) > MAX_METADATA:
        raise invalid(field, f"at most {MAX_METADATA} entries")
    for key, value in metadata.items():
        if METADATA_KEY.fullmatch(key) is None:
            raise invalid(field, f"key {key[:80]!r} must match {METADATA_KEY.pattern}")
        if len(value) > MAX_METADATA_VALUE:
            raise invalid(f"{field}[{key}]", f"at most {MAX_METADATA_VALUE} characters")


class KnowledgeStore:
    """Collections and documents of a tenant."""

    def __init__(
        self, context: StoreContext, *, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    ) -> None:
        self._context = context
        self._db = context.db
        self.max_document_bytes = max_document_bytes

    # -- collections -----------------------------------------------------------------------

    def _collections_with_counts(self) -> sa.Select[Any]:
        counts = (
            sa.select(
                documents.c.collection_pk,
                sa.func.count().label("document_count"),
                sa.func.sum(documents.c.chunk_count).label("chunk_count"),
                sa.func.sum(documents.c.size_bytes).label("size_bytes"),
            )
            .group_by(documents.c.collection_pk)
            .subquery()
        )
        return sa.select(
            collections,
            counts.c.document_count,
            counts.c.chunk_count,
            counts.c.size_bytes,
        ).select_from(collections.outerjoin(counts, counts.c.collection_pk == collections.c.id))

    async def create_collection(
        self, tenant: str, request: kpb.CreateCollectionRequest
    ) -> kpb.CreateCollectionResponse:
        if ID_PATTERN.fullmatch(request.collection_id) is None:
            raise invalid("collection_id", f"must match {ID_PATTERN.pattern}")
        check_text(request.collection.display_name, 255, "collection.display_name")
        check_text(request.collection.description, 4000, "collection.description")
        collection_id = request.collection_id

        async def create(conn: AsyncConnection) -> kpb.CreateCollectionResponse:
            now = self._context.now()
            row = (
                await conn.execute(
                    insert_ignore(self._db, collections)
                    .values(
                        tenant_id=tenant,
                        collection_id=collection_id,
                        display_name=request.collection.display_name,
                        description=request.collection.description,
                        create_time=now,
                        update_time=now,
                    )
                    .returning(*collections.c)
                )
            ).first()
            if row is None:
                raise AlreadyExists(
                    f"collection 'collections/{collection_id}' already exists",
                    reason="COLLECTION_EXISTS",
                    metadata={"collection": f"collections/{collection_id}"},
                )
            return kpb.CreateCollectionResponse(
                collection=_collection_to_proto(
                    _Counted(row, document_count=0, chunk_count=0, size_bytes=0)
                )
            )

        return await self._context.idempotent(
            tenant,
            "CreateCollection",
            request.request_id,
            request,
            kpb.CreateCollectionResponse,
            create,
        )

    async def get_collection(
        self, tenant: str, request: kpb.GetCollectionRequest
    ) -> kpb.GetCollectionResponse:
        collection_id = parse_collection_name(request.name)
        query = self._collections_with_counts().where(
            collections.c.tenant_id == tenant, collections.c.collection_id == collection_id
        )
        async with self._db.read("GetCollection") as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise _collection_not_found(collection_id)
        return kpb.GetCollectionResponse(collection=_collection_to_proto(row))

    async def list_collections(
        self, tenant: str, request: kpb.ListCollectionsRequest
    ) -> kpb.ListCollectionsResponse:
        size = page_size(request.page_size)
        query_key = ("collections",)
        token = PageToken.decode(request.page_token, query_key)
        query = self._collections_with_counts().where(collections.c.tenant_id == tenant)
        if token is not None:
            query = query.where(collections.c.collection_id > str(token.after))
        query = query.order_by(collections.c.collection_id).limit(size + 1)
        async with self._db.read("ListCollections") as conn:
            rows = (await conn.execute(query)).all()
        response = kpb.ListCollectionsResponse(
            collections=[_collection_to_proto(r) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(rows[size - 1].collection_id).encode(query_key)
        return response

    async def delete_collection(
        self, tenant: str, request: kpb.DeleteCollectionRequest
    ) -> kpb.DeleteCollectionResponse:
        collection_id = parse_collection_name(request.name)

        async def delete(conn: AsyncConnection) -> kpb.DeleteCollectionResponse:
            pk = await collection_pk(conn, tenant, collection_id)
            # Passages first: their delete is what updates the full-text index.
            await conn.execute(sa.delete(chunks).where(chunks.c.collection_pk == pk))
            await conn.execute(sa.delete(documents).where(documents.c.collection_pk == pk))
            await conn.execute(sa.delete(collections).where(collections.c.id == pk))
            return kpb.DeleteCollectionResponse()

        return await self._context.idempotent(
            tenant,
            "DeleteCollection",
            request.request_id,
            request,
            kpb.DeleteCollectionResponse,
            delete,
        )

    # -- documents -------------------------------------------------------------------------

    async def upload(
        self, tenant: str, parts: AsyncIterator[kpb.UploadDocumentRequest]
    ) -> kpb.UploadDocumentResponse:
        """Read an upload stream within the size limit, then ingest it."""
        header, data = await read_upload(parts, self.max_document_bytes)
        return await self.ingest(tenant, header, data)

    async def ingest(
        self, tenant: str, header: kpb.DocumentUpload, data: bytes
    ) -> kpb.UploadDocumentResponse:
        """Ingest one document (see the module docstring)."""
        if len(data) > self.max_document_bytes:
            name = header.document.display_name or header.document_id or "the document"
            raise invalid(
                "data",
                f"document {name!r} is larger than the limit of {self.max_document_bytes} bytes",
            )
        collection_id = parse_collection_name(header.parent, "header.parent")
        document_id = (
            parse_loose_id(header.document_id, "header.document_id", "document id")
            if header.document_id
            else new_id()
        )
        check_request_id(header.request_id, "header.request_id")
        draft = header.document
        check_text(draft.display_name, 255, "header.document.display_name")
        if draft.format not in knowledge_pb2.DocumentFormat.values():
            raise invalid("header.document.format", "unknown document format")
        _check_metadata(dict(draft.metadata), "header.document.metadata")
        chunk_chars = header.chunking.chunk_chars or DEFAULT_CHUNK_CHARS
        overlap = header.chunking.overlap_chars or min(DEFAULT_OVERLAP_CHARS, chunk_chars // 4)
        if not 200 <= chunk_chars <= 8000:
            raise invalid("header.chunking.chunk_chars", "must be 200 to 8000 (0: 1200)")
        if not 0 <= overlap < chunk_chars // 2:
            raise invalid("header.chunking.overlap_chars", "must be 0 to less than half a chunk")
        name = f"collections/{collection_id}/documents/{document_id}"
        label = draft.display_name or name
        if not data:
            raise invalid("data", f"document {label!r} is empty")
        document_format = detect_format(draft.format, draft.display_name, data)
        try:
            extracted, passages = await asyncio.to_thread(
                read_passages, data, document_format, draft.display_name, chunk_chars, overlap
            )
        except DocumentRejected as rejected:
            raise invalid("data", f"document {label!r} {rejected}") from None
        digest = hashlib.sha256(data).hexdigest()
        # What the request_id stands for: the header with the content's hash.
        fingerprint = kpb.UploadDocumentRequest(header=header)
        fingerprint.header.document.sha256 = digest

        async def store(conn: AsyncConnection) -> kpb.UploadDocumentResponse:
            pk = await collection_pk(conn, tenant, collection_id)
            now = self._context.now()
            row = (
                await conn.execute(
                    insert_ignore(self._db, documents)
                    .values(
                        tenant_id=tenant,
                        collection_pk=pk,
                        document_id=document_id,
                        display_name=draft.display_name,
                        title=extracted.title[:1000],
                        format=document_format,
                        metadata=dict(draft.metadata),
                        size_bytes=len(data),
                        text_chars=len(extracted.text),
                        chunk_count=len(passages),
                        page_count=len(extracted.page_starts),
                        sha256=digest,
                        create_time=now,
                    )
                    .returning(*documents.c)
                )
            ).first()
            if row is None:
                raise AlreadyExists(
                    f"document {name!r} already exists",
                    reason="DOCUMENT_EXISTS",
                    metadata={"document": name},
                )
            await conn.execute(
                sa.insert(chunks),
                [
                    {
                        "tenant_id": tenant,
                        "collection_pk": pk,
                        "document_pk": row.id,
                        "chunk_index": chunk.index,
                        "content": chunk.text,
                        "start_offset": chunk.start,
                        "end_offset": chunk.end,
                        "page": chunk.page,
                    }
                    for chunk in passages
                ],
            )
            await conn.execute(
                sa.update(collections).where(collections.c.id == pk).values(update_time=now)
            )
            return kpb.UploadDocumentResponse(document=document_to_proto(row, collection_id))

        return await self._context.idempotent(
            tenant,
            "UploadDocument",
            header.request_id,
            fingerprint,
            kpb.UploadDocumentResponse,
            store,
        )

    async def get_document(
        self, tenant: str, request: kpb.GetDocumentRequest
    ) -> kpb.GetDocumentResponse:
        collection_id, document_id = parse_document_name(request.name)
        async with self._db.read("GetDocument") as conn:
            row = (
                await conn.execute(
                    sa.select(documents)
                    .select_from(
                        documents.join(collections, collections.c.id == documents.c.collection_pk)
                    )
                    .where(
                        collections.c.tenant_id == tenant,
                        collections.c.collection_id == collection_id,
                        documents.c.document_id == document_id,
                    )
                )
            ).first()
        if row is None:
            raise _document_not_found(request.name)
        return kpb.GetDocumentResponse(document=document_to_proto(row, collection_id))

    async def list_documents(
        self, tenant: str, request: kpb.ListDocumentsRequest
    ) -> kpb.ListDocumentsResponse:
        collection_id = parse_collection_name(request.parent, "parent")
        size = page_size(request.page_size)
        query_key = ("documents", collection_id)
        token = PageToken.decode(request.page_token, query_key)
        async with self._db.read("ListDocuments") as conn:
            pk = await collection_pk(conn, tenant, collection_id)
            query = sa.select(documents).where(documents.c.collection_pk == pk)
            if token is not None:
                query = query.where(documents.c.document_id > str(token.after))
            rows = (
                await conn.execute(query.order_by(documents.c.document_id).limit(size + 1))
            ).all()
        response = kpb.ListDocumentsResponse(
            documents=[document_to_proto(r, collection_id) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(rows[size - 1].document_id).encode(query_key)
        return response

    async def delete_document(
        self, tenant: str, request: kpb.DeleteDocumentRequest
    ) -> kpb.DeleteDocumentResponse:
        collection_id, document_id = parse_document_name(request.name)

        async def delete(conn: AsyncConnection) -> kpb.DeleteDocumentResponse:
            pk = (
                await conn.execute(
                    sa.select(documents.c.id)
                    .select_from(
                        documents.join(collections, collections.c.id == documents.c.collection_pk)
                    )
                    .where(
                        collections.c.tenant_id == tenant,
                        collections.c.collection_id == collection_id,
                        documents.c.document_id == document_id,
                    )
                )
            ).scalar()
            if pk is None:
                raise _document_not_found(request.name)
            await conn.execute(sa.delete(chunks).where(chunks.c.document_pk == pk))
            await conn.execute(sa.delete(documents).where(documents.c.id == pk))
            return kpb.DeleteDocumentResponse()

        return await self._context.idempotent(
            tenant,
            "DeleteDocument",
            request.request_id,
            request,
            kpb.DeleteDocumentResponse,
            delete,
        )


class _Counted:
    """A collection row with counts (a fresh collection's)."""

    def __init__(self, row: Any, **counts: int) -> None:
        self._row = row
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        if name in self._counts:
            return self._counts[name]
        return getattr(self._row, name)
