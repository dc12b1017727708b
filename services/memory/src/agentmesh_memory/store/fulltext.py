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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal, Protocol

import sqlalchemy as sa

from agentmesh.common.v1 import knowledge_pb2
from agentmesh_memory.db.tables import agent_memory, chunks
from agentmesh_memory.names import invalid

__all__ = [
    "FullTextIndex",
    "PostgresFullText",
    "SearchQuery",
    "SqliteFullText",
    "Term",
    "Variant",
    "full_text_index",
    "parse_query",
]

MAX_TERMS = 32
#: An any-term query (a question in plain language) keeps its first words up to this many.
MAX_ANY_TERMS = 12
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


#: Which passages a rendering of an any-term query matches (see SearchQuery).
Variant = Literal["all", "strict", "rest"]


@dataclass(frozen=True)
class SearchQuery:
    """A parsed query: groups of alternatives (OR), combined by the mode, and excluded terms.

    An any-term query of three or more terms renders in three variants: ``all`` (any term),
    ``strict`` (at least two of them: Elasticsearch's minimum_should_match) and ``rest``
    (exactly one). Searching ``strict`` first and ``rest`` only when that does not fill a
    page ranks far fewer passages for a question whose words are common, with the same
    order at the top: a passage with two of the words outranks one with one of them.
    """

    groups: tuple[tuple[Term, ...], ...]
    excluded: tuple[Term, ...]
    any_term: bool

    @property
    def terms(self) -> tuple[Term, ...]:
        return tuple(t for group in self.groups for t in group)

    @property
    def splits(self) -> bool:
        """Whether the strict/rest variants apply (an any-term query of 3+ terms)."""
        return self.any_term and len(self.terms) >= 3

    def _render(
        self,
        variant: Variant,
        term: Callable[[Term], str],
        either: str,
        both: str,
        negate: Callable[[str], str],
    ) -> str:
        terms = self.terms
        if not self.any_term:
            positive = both.join(
                "(" + either.join(term(t) for t in group) + ")" for group in self.groups
            )
        else:
            positive = "(" + either.join(term(t) for t in terms) + ")"
            if self.splits and variant != "all":
                pairs = (
                    "("
                    + either.join(f"({term(a)}{both}{term(b)})" for a, b in combinations(terms, 2))
                    + ")"
                )
                positive = pairs if variant == "strict" else f"{positive}{negate(pairs)}"
        return positive + "".join(negate(term(t)) for t in self.excluded)

    def fts5(self, variant: Variant = "all") -> str:
        """FTS5 MATCH syntax."""
        return self._render(
            variant,
            lambda t: '"' + " ".join(t.words) + '"',
            " OR ",
            " AND ",
            lambda expression: f" NOT {expression}",
        )

    def tsquery(self, variant: Variant = "all") -> str:
        """PostgreSQL to_tsquery syntax."""
        return self._render(
            variant,
            lambda t: "(" + " <-> ".join(f"'{w}'" for w in t.words) + ")",
            " | ",
            " & ",
            lambda expression: f" & !{expression}",
        )


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
    if any_term:  # one group of distinct terms, the first MAX_ANY_TERMS of them
        distinct = list(dict.fromkeys(t for group in groups for t in group))
        groups = [distinct[:MAX_ANY_TERMS]]
    if sum(len(g) for g in groups) + len(excluded) > MAX_TERMS:
        raise invalid(field, f"has more than {MAX_TERMS} words")
    return SearchQuery(tuple(tuple(g) for g in groups), tuple(excluded), any_term)


class FullTextIndex(Protocol):
    """How the stores rank passages and memory entries by a query."""

    def passage_hits(
        self, query: SearchQuery, where: Sequence[Any], variant: Variant = "all"
    ) -> sa.Select[Any]:
        """A select of (``id``, ``score``) of matching passages under `where` (conditions on
        ``chunks``), best first; the caller adds limit and offset."""
        ...

    def with_snippets(
        self, select: sa.Select[Any], query: SearchQuery, marks: tuple[str, str]
    ) -> sa.Select[Any]:
        """`select` (of passages, from ``chunks``) with a ``snippet`` column: an excerpt with the
        matches between `marks`."""
        ...

    def memory_hits(self, query: SearchQuery, where: Sequence[Any]) -> sa.Select[Any]:
        """A select of (``id``, ``score``) of matching memory entries under `where`
        (conditions on ``agent_memory``), best first."""
        ...


class SqliteFullText:
    """FTS5 with bm25 (lower is better in SQLite; scores are negated so higher is better)."""

    _chunks_fts = sa.table("chunks_fts", sa.column("rowid"))
    _memory_fts = sa.table("agent_memory_fts", sa.column("rowid"))

    def passage_hits(
        self, query: SearchQuery, where: Sequence[Any], variant: Variant = "all"
    ) -> sa.Select[Any]:
        fts: sa.ColumnClause[Any] = sa.literal_column("chunks_fts")
        rank = sa.func.bm25(fts)
        return (
            sa.select(chunks.c.id, (-rank).label("score"))
            .select_from(self._chunks_fts.join(chunks, chunks.c.id == self._chunks_fts.c.rowid))
            .where(fts.op("MATCH")(query.fts5(variant)), *where)
            .order_by(rank, chunks.c.id)
        )

    def with_snippets(
        self, select: sa.Select[Any], query: SearchQuery, marks: tuple[str, str]
    ) -> sa.Select[Any]:
        # snippet() needs the FTS5 table in the query, matched by the query.
        fts: sa.ColumnClause[Any] = sa.literal_column("chunks_fts")
        excerpt = sa.func.snippet(fts, 0, marks[0], marks[1], "…", 32).label("snippet")
        return (
            select.add_columns(excerpt)
            .join(self._chunks_fts, self._chunks_fts.c.rowid == chunks.c.id)
            .where(fts.op("MATCH")(query.fts5()))
        )

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

    def _tsquery(self, query: SearchQuery, variant: Variant = "all") -> Any:
        return sa.func.to_tsquery(
            sa.literal_column(f"'{self.CONFIG}'::regconfig"), query.tsquery(variant)
        )

    def passage_hits(
        self, query: SearchQuery, where: Sequence[Any], variant: Variant = "all"
    ) -> sa.Select[Any]:
        # Matched by the variant, ranked by every term: the pairs of a strict query make the
        # rank many times dearer per passage, and rank no differently at the top.
        rank = sa.func.ts_rank_cd(self._vector, self._tsquery(query))
        return (
            sa.select(chunks.c.id, rank.label("score"))
            .where(self._vector.op("@@")(self._tsquery(query, variant)), *where)
            .order_by(rank.desc(), chunks.c.id)
        )

    def with_snippets(
        self, select: sa.Select[Any], query: SearchQuery, marks: tuple[str, str]
    ) -> sa.Select[Any]:
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
        return select.add_columns(headline.label("snippet"))

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
