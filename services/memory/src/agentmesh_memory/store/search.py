"""SearchDocuments: ranked passages of a tenant's documents, filtered, highlighted, paged.

The ranking and the excerpts come from the engine's full-text index (`fulltext.py`); this
module turns a request into its filters (collections, documents, metadata, always the tenant)
and a page. Pages are offsets bound to the query (a token from one query is refused by
another), capped at MAX_RESULTS results in all.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from agentmesh.common.v1 import knowledge_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh_memory.db.tables import chunks, collections, documents
from agentmesh_memory.names import (
    ANY_COLLECTION,
    LOOSE_ID_PATTERN,
    PageToken,
    invalid,
    parse_collection_name,
    parse_document_name,
)

from .base import StoreContext
from .fulltext import SearchQuery, full_text_index, parse_query
from .knowledge import collection_pk

__all__ = ["SearchStore"]

DEFAULT_RESULTS = 10
MAX_PAGE = 100
MAX_RESULTS = 1000
MAX_FILTERS = 100
DEFAULT_MARKS = ("<mark>", "</mark>")


def _marks(request: kpb.SearchDocumentsRequest) -> tuple[str, str]:
    start = request.highlight_start or DEFAULT_MARKS[0]
    end = request.highlight_end or DEFAULT_MARKS[1]
    for field, mark in (("highlight_start", start), ("highlight_end", end)):
        if len(mark) > 16 or any(c in mark for c in '",\n\r\t'):
            raise invalid(field, "at most 16 characters, without quotes, commas or line breaks")
    return start, end


class SearchStore:
    """Full-text search over the passages of documents."""

    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db
        self._index = full_text_index(context.db.dialect)

    async def search(
        self, tenant: str, request: kpb.SearchDocumentsRequest
    ) -> kpb.SearchDocumentsResponse:
        parent = parse_collection_name(request.parent, "parent", allow_any=True)
        query = parse_query(request.query, request.mode)
        if request.mode not in knowledge_pb2.SearchMode.values():
            raise invalid("mode", "unknown search mode")
        size = request.page_size or DEFAULT_RESULTS
        if not 1 <= size <= MAX_PAGE:
            raise invalid("page_size", f"must be between 1 and {MAX_PAGE} (0 for 10)")
        if parent != ANY_COLLECTION and request.collections:
            raise invalid("collections", "only with the parent 'collections/-'")
        wanted_collections = [
            parse_collection_name(name, f"collections[{i}]")
            for i, name in enumerate(request.collections)
        ]
        named_documents: list[tuple[str, str]] = []
        bare_documents: list[str] = []
        for i, name in enumerate(request.documents):
            if name.startswith("collections/"):
                named_documents.append(parse_document_name(name, f"documents[{i}]"))
            elif LOOSE_ID_PATTERN.fullmatch(name):
                bare_documents.append(name)
            else:
                raise invalid(f"documents[{i}]", "must be a document name or a document id")
        if len(wanted_collections) > MAX_FILTERS or len(request.documents) > MAX_FILTERS:
            raise invalid("documents", f"at most {MAX_FILTERS} collections and documents")
        for key in request.metadata:
            if not key or len(key) > 64 or not all(c.isalnum() or c in "_.-" for c in key):
                raise invalid("metadata", f"key {key[:80]!r} must match [A-Za-z0-9_.-]{{1,64}}")
        marks = _marks(request)
        query_key = (
            "search",
            parent,
            request.query,
            request.mode,
            tuple(request.collections),
            tuple(request.documents),
            tuple(sorted(request.metadata.items())),
        )
        token = PageToken.decode(request.page_token, query_key)
        offset = 0
        if token is not None:
            if not isinstance(token.after, int) or token.after < 0:
                raise invalid("page_token", "is not a token returned by this search")
            offset = token.after
        if offset >= MAX_RESULTS:
            return kpb.SearchDocumentsResponse()
        size = min(size, MAX_RESULTS - offset)

        where: list[Any] = [chunks.c.tenant_id == tenant]
        needs_documents = bool(named_documents or bare_documents or request.metadata)
        async with self._db.read("SearchDocuments") as conn:
            if parent != ANY_COLLECTION:
                where.append(chunks.c.collection_pk == await collection_pk(conn, tenant, parent))
            elif wanted_collections:
                # Collections that do not exist (or are another tenant's) match nothing.
                where.append(
                    chunks.c.collection_pk.in_(
                        sa.select(collections.c.id).where(
                            collections.c.tenant_id == tenant,
                            collections.c.collection_id.in_(wanted_collections),
                        )
                    )
                )
            if needs_documents:
                where.append(
                    chunks.c.document_pk.in_(
                        self._documents(tenant, request, named_documents, bare_documents)
                    )
                )
            hits = await self._hits(conn, query, where, offset, size + 1)
            page = hits[:size]
            ids = [int(hit.id) for hit in page]
            details = await self._details(conn, query, ids, marks)
        response = kpb.SearchDocumentsResponse()
        for hit in page:
            row = details[int(hit.id)]
            result = response.results.add(snippet=row.snippet or "")
            citation = result.citation
            citation.document = f"collections/{row.collection_id}/documents/{row.document_id}"
            citation.document_title = row.title or row.display_name
            citation.chunk_index = row.chunk_index
            citation.score = float(hit.score)
            citation.text = row.content
            citation.start_offset = row.start_offset
            citation.end_offset = row.end_offset
            citation.page = row.page
        if len(hits) > size and offset + size < MAX_RESULTS:
            response.next_page_token = PageToken(offset + size).encode(query_key)
        return response

    async def _hits(
        self, conn: Any, query: SearchQuery, where: list[Any], offset: int, limit: int
    ) -> list[Any]:
        """Ranked hits `offset`..`offset + limit`. An any-term query of 3+ terms ranks the
        passages with two or more of its terms first, and the others (one term) only when
        those do not fill the page (see SearchQuery)."""
        if not query.splits:
            statement = self._index.passage_hits(query, where).limit(limit).offset(offset)
            return list((await conn.execute(statement)).all())
        strict = self._index.passage_hits(query, where, "strict")
        hits = list((await conn.execute(strict.limit(offset + limit))).all())
        if len(hits) == offset + limit:
            return hits[offset:]
        rest = self._index.passage_hits(query, where, "rest")
        skipped = max(offset - len(hits), 0)
        more = (await conn.execute(rest.limit(limit - len(hits[offset:])).offset(skipped))).all()
        return hits[offset:] + list(more)

    @staticmethod
    def _documents(
        tenant: str,
        request: kpb.SearchDocumentsRequest,
        named: list[tuple[str, str]],
        bare: list[str],
    ) -> sa.Select[Any]:
        """Row ids of the documents the request's document and metadata filters allow."""
        query = (
            sa.select(documents.c.id)
            .select_from(documents.join(collections, collections.c.id == documents.c.collection_pk))
            .where(documents.c.tenant_id == tenant)
        )
        choices = [
            sa.and_(collections.c.collection_id == c, documents.c.document_id == d)
            for c, d in named
        ]
        if bare:
            choices.append(documents.c.document_id.in_(bare))
        if choices:
            query = query.where(sa.or_(*choices))
        for key, value in sorted(request.metadata.items()):
            query = query.where(documents.c.metadata[key].as_string() == value)
        return query

    async def _details(
        self, conn: Any, query: SearchQuery, ids: list[int], marks: tuple[str, str]
    ) -> dict[int, Any]:
        """The passages with their document, collection and excerpt: one statement."""
        if not ids:
            return {}
        select = (
            sa.select(
                chunks.c.id,
                chunks.c.chunk_index,
                chunks.c.content,
                chunks.c.start_offset,
                chunks.c.end_offset,
                chunks.c.page,
                documents.c.document_id,
                documents.c.title,
                documents.c.display_name,
                collections.c.collection_id,
            )
            .select_from(
                chunks.join(documents, documents.c.id == chunks.c.document_pk).join(
                    collections, collections.c.id == chunks.c.collection_pk
                )
            )
            .where(chunks.c.id.in_(ids))
        )
        rows = await conn.execute(self._index.with_snippets(select, query, marks))
        return {int(row.id): row for row in rows}
