"""Full-text search with each database's own engine, behind one small port.

`FullTextIndex` is what the knowledge and memory stores search through. Two adapters:

* `SqliteFullText`: FTS5 tables (``chunks_fts``, ``agent_memory_fts``), ranked by ``bm25``,
  excerpts by ``snippet()``;
* `PostgresFullText`: the generated ``tsvector`` of passages and an expression index over
  memory, both GIN-indexed, ranked by ``ts_rank_cd``, excerpts by ``ts_headline``.

A user's query is parsed once (:func:`parse_query`: words, "quoted phrases", -excluded words,
OR) and rendered in each engine's syntax from words that hold only letters and digits, so no
input can break out of the query language.

A vector index (pgvector's ``vector`` column with an HNSW index, or a sqlite-vec ``vec0``
table) slots in as one more implementation of the same port: ``passage_hits`` would order by
distance to the query's embedding (or fuse it with the text rank), keeping the filters,
pages and the store above it unchanged; embeddings would be computed at ingestion, in the
same transaction that writes the passages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import knowledge_pb2
from agentmesh_memory.db.tables import agent_memory, chunks
from agentmesh_memory.names import invalid

__all__ = [
    "FullTextIndex",
    "PostgresFullText",
    "SearchQuery",
    "SqliteFullText",
    "Term",
    "full_text_index",
    "parse_query",
]

MAX_TERMS = 32
_WORD = re.compile(r"[^\W_]+")
_TOKEN = re.compile(r'-?"[^"]*"?|\S+')
# Words too common to help a plain-language question find a passage (SEARCH_MODE_ANY_TERM).
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class Term:
    """One word, or a phrase of words in order."""

    words: tuple[str, ...]

    @property
    def phrase(self) -> bool:
        return len(self.words) > 1


@dataclass(frozen=True)
class SearchQuery:
    """A parsed query: groups of alternatives (OR), combined by the mode, and excluded terms."""

    groups: tuple[tuple[Term, ...], ...]
    excluded: tuple[Term, ...]
    any_term: bool

    def fts5(self) -> str:
        def term(t: Term) -> str:
            return '"' + " ".join(t.words) + '"'

        if self.any_term:
            positive = "(" + " OR ".join(term(t) for g in self.groups for t in g) + ")"
        else:
            positive = " AND ".join(
                "(" + " OR ".join(term(t) for t in group) + ")" for group in self.groups
            )
        return positive + "".join(f" NOT {term(t)}" for t in self.excluded)

    def tsquery(self) -> str:
        def term(t: Term) -> str:
            return "(" + " <-> ".join(f"'{w}'" for w in t.words) + ")"

        joiner = " | " if self.any_term else " & "
        if self.any_term:
            positive = " | ".join(term(t) for g in self.groups for t in g)
        else:
            positive = joiner.join(
                "(" + " | ".join(term(t) for t in group) + ")" for group in self.groups
            )
        negative = "".join(f" & !{term(t)}" for t in self.excluded)
        return f"({positive}){negative}"


def _terms_of(token: str) -> Term | None:
    words = tuple(w.lower() for w in _WORD.findall(token))
    return Term(words) if words else None


def parse_query(text: str, mode: int, field: str = "query", max_chars: int = 1000) -> SearchQuery:
    """Parse a user's query; INVALID_ARGUMENT naming `field` when it has no word to look for."""
    if len(text) > max_chars:
        raise invalid(field, f"is {len(text)} characters; at most {max_chars}")
    any_term = mode == knowledge_pb2.SEARCH_MODE_ANY_TERM
    groups: list[list[Term]] = []
    excluded: list[Term] = []
    join_next = False
    for token in _TOKEN.findall(text):
        if token == "OR":
            join_next = bool(groups)
            continue
        negated = token.startswith("-") and len(token) > 1
        term = _terms_of(token[1:] if negated else token)
        if term is None:
            continue
        if negated:
            excluded.append(term)
        elif join_next:
            groups[-1].append(term)
        else:
            groups.append([term])
        join_next = False
    meaningful = [[t for t in group if t.phrase or t.words[0] not in STOPWORDS] for group in groups]
    if any(meaningful):
        groups = [group for group in meaningful if group]
    if not groups:
        raise invalid(field, "must contain at least one word to look for")
    if sum(len(g) for g in groups) + len(excluded) > MAX_TERMS:
        raise invalid(field, f"has more than {MAX_TERMS} words")
    return SearchQuery(tuple(tuple(g) for g in groups), tuple(excluded), any_term)


class FullTextIndex(Protocol):
    """How the stores rank passages and memory entries by a query."""

    def passage_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        """A select of (``id``, ``score``) of matching passages under `where` (conditions on
        ``chunks``), best first; the caller adds joins' conditions, limit and offset."""
        ...

    async def snippets(
        self,
        conn: AsyncConnection,
        query: SearchQuery,
        ids: Sequence[int],
        marks: tuple[str, str],
    ) -> dict[int, str]:
        """Excerpts of the given passages with the matches between `marks`."""
        ...

    def memory_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        """A select of (``id``, ``score``) of matching memory entries under `where`
        (conditions on ``agent_memory``), best first."""
        ...


class SqliteFullText:
    """FTS5 with bm25 (lower is better in SQLite; scores are negated so higher is better)."""

    _chunks_fts = sa.table("chunks_fts", sa.column("rowid"))
    _memory_fts = sa.table("agent_memory_fts", sa.column("rowid"))

    def passage_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        fts: sa.ColumnClause[Any] = sa.literal_column("chunks_fts")
        rank = sa.func.bm25(fts)
        return (
            sa.select(chunks.c.id, (-rank).label("score"))
            .select_from(self._chunks_fts.join(chunks, chunks.c.id == self._chunks_fts.c.rowid))
            .where(fts.op("MATCH")(query.fts5()), *where)
            .order_by(rank, chunks.c.id)
        )

    async def snippets(
        self,
        conn: AsyncConnection,
        query: SearchQuery,
        ids: Sequence[int],
        marks: tuple[str, str],
    ) -> dict[int, str]:
        if not ids:
            return {}
        fts: sa.ColumnClause[Any] = sa.literal_column("chunks_fts")
        excerpt = sa.func.snippet(fts, 0, marks[0], marks[1], "…", 32)
        rows = await conn.execute(
            sa.select(self._chunks_fts.c.rowid, excerpt)
            .select_from(self._chunks_fts)
            .where(fts.op("MATCH")(query.fts5()), self._chunks_fts.c.rowid.in_(list(ids)))
        )
        return {int(row[0]): str(row[1]) for row in rows}

    def memory_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        fts: sa.ColumnClause[Any] = sa.literal_column("agent_memory_fts")
        rank = sa.func.bm25(fts)
        return (
            sa.select(agent_memory.c.id, (-rank).label("score"))
            .select_from(
                self._memory_fts.join(agent_memory, agent_memory.c.id == self._memory_fts.c.rowid)
            )
            .where(fts.op("MATCH")(query.fts5()), *where)
            .order_by(rank, agent_memory.c.id)
        )


class PostgresFullText:
    """tsvector with GIN indexes, ranked by ts_rank_cd, in the `english` configuration."""

    CONFIG = "english"
    _vector: sa.ColumnClause[Any] = sa.literal_column("chunks.search_vector")
    # Must match the expression of the index ix_agent_memory_search (migration 0004).
    _memory_vector: sa.ColumnClause[Any] = sa.literal_column(
        "to_tsvector('english'::regconfig, replace(agent_memory.key, '_', ' ') || ' ' || "
        "agent_memory.value::text)"
    )

    def _tsquery(self, query: SearchQuery) -> Any:
        return sa.func.to_tsquery(sa.literal_column(f"'{self.CONFIG}'::regconfig"), query.tsquery())

    def passage_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        tsquery = self._tsquery(query)
        rank = sa.func.ts_rank_cd(self._vector, tsquery)
        return (
            sa.select(chunks.c.id, rank.label("score"))
            .where(self._vector.op("@@")(tsquery), *where)
            .order_by(rank.desc(), chunks.c.id)
        )

    async def snippets(
        self,
        conn: AsyncConnection,
        query: SearchQuery,
        ids: Sequence[int],
        marks: tuple[str, str],
    ) -> dict[int, str]:
        if not ids:
            return {}
        options = (
            f'StartSel="{marks[0]}", StopSel="{marks[1]}", MaxWords=35, MinWords=15, '
            'MaxFragments=2, FragmentDelimiter=" … "'
        )
        headline = sa.func.ts_headline(
            sa.literal_column(f"'{self.CONFIG}'::regconfig"),
            chunks.c.content,
            self._tsquery(query),
            options,
        )
        rows = await conn.execute(sa.select(chunks.c.id, headline).where(chunks.c.id.in_(ids)))
        return {int(row[0]): str(row[1]) for row in rows}

    def memory_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        tsquery = self._tsquery(query)
        rank = sa.func.ts_rank_cd(self._memory_vector, tsquery)
        return (
            sa.select(agent_memory.c.id, rank.label("score"))
            .where(self._memory_vector.op("@@")(tsquery), *where)
            .order_by(rank.desc(), agent_memory.c.id)
        )


def full_text_index(dialect: str) -> FullTextIndex:
    """The index of the engine in use."""
    return PostgresFullText() if dialect == "postgresql" else SqliteFullText()
