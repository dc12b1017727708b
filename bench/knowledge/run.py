"""Benchmark of documents and retrieval: ingestion, full-text search at 100,000 passages, and
what retrieval adds to a research agent's turn, on SQLite and PostgreSQL.

    uv run --frozen --all-packages python bench/knowledge/run.py               # both engines
    uv run --frozen --all-packages python bench/knowledge/run.py --engine sqlite --chunks 20000

Each memory server runs as its own process (``python -m agentmesh_memory``) on a fresh
database; this process is the gRPC client (and, for the turn overhead, the orchestrator's
engine with a model that answers at once). Measured:

* ingestion: MB/s of UploadDocument for generated text documents (1.2 MB each, about 1,000
  passages) and for a generated 40-page PDF, extraction, chunking and indexing included;
* search: SearchDocuments latency p50 / p99 over ``--chunks`` passages (default 100,000), for
  a mix of queries: two words (all must match), a phrase, a plain-language question (any word
  may match), each with and without a filter, snippets included;
* retrieval overhead: what a research agent's turn spends retrieving (the search the
  orchestrator makes before the model call), p50 / p99, and the difference in the duration
  of a whole one-turn session with retrieval on and off.

The corpus is generated (a Zipf-distributed vocabulary of 20,000 words, seeded), so a run is
reproducible. Writes ``bench/knowledge/results.json``; ``RESULTS.md`` records runs by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc.aio

from agentmesh.common.v1 import agents_pb2, knowledge_pb2, sessions_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_cli.mesh import MEMORY, ServiceProcess
from agentmesh_memory.testing import (
    PostgresServer,
    create_database,
    drop_database,
    pdf_document,
    postgres_server,
)
from agentmesh_orchestrator.adapters.memory_client import MemoryClient
from agentmesh_orchestrator.agents import prepare_agent
from agentmesh_orchestrator.context import ContextAssembler
from agentmesh_orchestrator.engine import EngineSettings, SessionEngine
from agentmesh_orchestrator.preferences import DocumentScope, SessionScope
from agentmesh_orchestrator.testing import Reply, ScriptedGateway

HERE = Path(__file__).resolve().parent
TENANT = "bench"
METADATA = (("x-agentmesh-tenant", TENANT),)
DOC_CHARS = 1_200_000
PART = 1024 * 1024


def vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "dra", "gon", "bel", "ix"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Corpus:
    """Seeded text whose word frequencies follow Zipf's law, in sentences and paragraphs."""

    def __init__(self, seed: int = 7, size: int = 20_000) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(size, self.rng)
        weights = [1 / (rank + 1) for rank in range(size)]
        total = 0.0
        self.cumulative = []
        for weight in weights:
            total += weight
            self.cumulative.append(total)
        self.rank = {word: rank for rank, word in enumerate(self.words)}
        self.samples: list[list[str]] = []  # word runs of stored passages, to ask about

    def remember(self, text: str, count: int = 20) -> None:
        """Keep `count` runs of words of `text`: queries are asked about stored passages."""
        words = text.replace(".", " ").lower().split()
        for _ in range(count):
            start = self.rng.randrange(0, max(len(words) - 60, 1))
            self.samples.append(words[start : start + 60])

    def text(self, chars: int) -> str:
        parts: list[str] = []
        length = 0
        while length < chars:
            words = self.rng.choices(self.words, cum_weights=self.cumulative, k=14)
            sentence = " ".join(words).capitalize() + "."
            if self.rng.random() < 0.12:
                sentence += "\n\n"
            parts.append(sentence)
            length += len(sentence) + 1
        return " ".join(parts)

    def query_words(self, k: int, rare: bool) -> list[str]:
        """`k` random words (rank 200-5000, or the very common 20-400), unrelated."""
        band = self.words[200:5000] if rare else self.words[20:400]
        return self.rng.sample(band, k)

    def topical(self, k: int, min_rank: int) -> list[str]:
        """`k` distinct words of rank >= `min_rank` from one stored passage (as a user asking
        about something in the documents would use)."""
        for _ in range(100):
            run = self.rng.choice(self.samples)
            candidates = list(dict.fromkeys(w for w in run if self.rank.get(w, 0) >= min_rank))
            if len(candidates) >= k:
                return self.rng.sample(candidates, k)
        return self.query_words(k, rare=True)

    def adjacent(self) -> str:
        """Two adjacent words of a stored passage, one of them not among the 100 most
        frequent, as a phrase (a phrase of two stopword-like words is no real search)."""
        for _ in range(100):
            run = self.rng.choice(self.samples)
            index = self.rng.randrange(0, len(run) - 1)
            pair = run[index], run[index + 1]
            if max(self.rank.get(word, 0) for word in pair) >= 100:
                break
        return f'"{pair[0]} {pair[1]}"'


@asynccontextmanager
async def memory_process(url: str, log: Path) -> AsyncIterator[str]:
    env = {
        "AGENTMESH_MEMORY_PORT": "0",
        "AGENTMESH_MEMORY_METRICS_PORT": "off",
        "AGENTMESH_MEMORY_DATABASE_URL": url,
        "AGENTMESH_MEMORY_MIGRATE_ON_START": "true",
        "AGENTMESH_MEMORY_LOG_LEVEL": "WARNING",
        "AGENTMESH_MEMORY_GRACE_SECONDS": "2",
        "AGENTMESH_MEMORY_MAX_DOCUMENT_BYTES": str(16 * 1024 * 1024),
        "AGENTMESH_MEMORY_STATEMENT_TIMEOUT_SECONDS": "120",
    }
    process = ServiceProcess(MEMORY, env, log_path=log)
    await process.start()
    try:
        await process.wait_healthy(60)
        yield process.address
    finally:
        await process.stop(grace=10)


def parts(collection: str, name: str, data: bytes) -> Iterator[kpb.UploadDocumentRequest]:
    yield kpb.UploadDocumentRequest(
        header=kpb.DocumentUpload(
            parent=collection, document=knowledge_pb2.Document(display_name=name)
        )
    )
    for start in range(0, len(data), PART):
        yield kpb.UploadDocumentRequest(data=data[start : start + PART])


async def ingest(
    stub: memory_pb2_grpc.MemoryServiceStub, corpus: Corpus, chunks: int
) -> dict[str, Any]:
    await stub.CreateCollection(
        kpb.CreateCollectionRequest(collection_id="corpus"), metadata=METADATA, timeout=10
    )
    await stub.CreateCollection(
        kpb.CreateCollectionRequest(collection_id="small"), metadata=METADATA, timeout=10
    )
    stored = 0
    uploaded = 0
    seconds = 0.0
    documents = 0
    while stored < chunks:
        remaining = chunks - stored
        plain = corpus.text(min(DOC_CHARS, max(remaining * 1100, 2000)))
        corpus.remember(plain)
        text = plain.encode()
        collection = "collections/small" if documents % 10 == 9 else "collections/corpus"
        started = time.perf_counter()
        reply = await stub.UploadDocument(
            parts(collection, f"doc-{documents}.txt", text), metadata=METADATA, timeout=600
        )
        seconds += time.perf_counter() - started
        stored += reply.document.chunk_count
        uploaded += len(text)
        documents += 1
        print(f"  {stored:>7} passages ({documents} documents)", end="\r", file=sys.stderr)
    print(file=sys.stderr)
    pages = [corpus.text(2400).replace("\n\n", "\n") for _ in range(40)]
    pdf = pdf_document(["\n".join(p[i : i + 90] for i in range(0, len(p), 90)) for p in pages])
    started = time.perf_counter()
    pdf_reply = await stub.UploadDocument(
        parts("collections/small", "report.pdf", pdf), metadata=METADATA, timeout=600
    )
    pdf_seconds = time.perf_counter() - started
    return {
        "documents": documents,
        "passages": stored + pdf_reply.document.chunk_count,
        "text_mb": round(uploaded / 1e6, 1),
        "text_mb_per_s": round(uploaded / 1e6 / seconds, 2),
        "text_passages_per_s": round(stored / seconds),
        "pdf_pages": pdf_reply.document.page_count,
        "pdf_mb": round(len(pdf) / 1e6, 3),
        "pdf_mb_per_s": round(len(pdf) / 1e6 / pdf_seconds, 3),
        "pdf_pages_per_s": round(pdf_reply.document.page_count / pdf_seconds, 1),
    }


async def vacuum(url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE chunks")
    finally:
        await conn.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(round(fraction * len(ordered)) - 1, 0))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


async def search(
    stub: memory_pb2_grpc.MemoryServiceStub, corpus: Corpus, queries: int
) -> dict[str, Any]:
    any_term = knowledge_pb2.SEARCH_MODE_ANY_TERM
    kinds: dict[str, list[float]] = {}
    hits: dict[str, list[int]] = {}

    def request(kind: str) -> kpb.SearchDocumentsRequest:
        filtered = kind.endswith("+filter")
        base = kind.removesuffix("+filter")
        if base == "two words":  # a search box: two words of a passage, both must match
            query = " ".join(corpus.topical(2, min_rank=300))
            mode = knowledge_pb2.SEARCH_MODE_ALL_TERMS
        elif base == "common words":  # two of the most frequent words: the worst case
            query = " ".join(corpus.query_words(2, rare=False))
            mode = knowledge_pb2.SEARCH_MODE_ALL_TERMS
        elif base == "phrase":
            query = corpus.adjacent()
            mode = knowledge_pb2.SEARCH_MODE_ALL_TERMS
        else:  # a plain-language question about a passage, as a research turn retrieves
            words = corpus.topical(4, min_rank=100) + corpus.query_words(2, rare=True)
            query = "What is " + " ".join(words) + "?"
            mode = any_term
        return kpb.SearchDocumentsRequest(
            parent="collections/-",
            query=query,
            mode=mode,
            collections=["collections/small"] if filtered else [],
            page_size=10,
        )

    rotation = [
        variant
        for base in ("two words", "phrase", "question", "common words")
        for variant in (base, base + "+filter")
    ]
    order = (rotation * (queries // len(rotation) + 1))[:queries]
    for kind in order[:20]:  # warm the caches
        await stub.SearchDocuments(request(kind), metadata=METADATA, timeout=30)
    for kind in order:
        message = request(kind)
        started = time.perf_counter()
        reply = await stub.SearchDocuments(message, metadata=METADATA, timeout=30)
        kinds.setdefault(kind, []).append(time.perf_counter() - started)
        hits.setdefault(kind, []).append(len(reply.results))
    # The mix a user or an agent asks; two of the most frequent words are reported apart.
    every = [
        latency
        for kind, values in kinds.items()
        if not kind.startswith("common")
        for latency in values
    ]
    return {
        "queries": len(order),
        "all": summary(every),
        "by_kind": {
            kind: {**summary(values), "mean_results": round(statistics.fmean(hits[kind]), 1)}
            for kind, values in kinds.items()
        },
    }


async def retrieval_overhead(address: str, corpus: Corpus, turns: int) -> dict[str, Any]:
    """The research turn's retrieval as the orchestrator makes it, and a whole session's
    duration with and without it (the model answers at once: only retrieval differs)."""
    channel = grpc.aio.insecure_channel(address)
    memory = MemoryClient(channel)
    stub = memory_pb2_grpc.MemoryServiceStub(channel)
    try:
        scope_docs = DocumentScope(collections=("collections/corpus",), source="session")
        latencies: list[float] = []
        for _ in range(turns):
            words = corpus.topical(4, min_rank=100) + corpus.query_words(2, rare=True)
            topic = "Research: What is " + " ".join(words)
            started = time.perf_counter()
            await memory.search_passages(
                TENANT, topic, collections=scope_docs.collections, documents=(), limit=3
            )
            latencies.append(time.perf_counter() - started)

        gateway = ScriptedGateway(lambda request: Reply(text="An answer [1].", chunks=1))
        researcher = prepare_agent(
            agents_pb2.AgentDefinition(
                name="agents/scout",
                type=agents_pb2.AGENT_TYPE_RESEARCH,
                model=agents_pb2.ModelSelection(route="default"),
            )
        )

        async def session_seconds(passages: int) -> float:
            engine = SessionEngine(
                store=memory,
                gateway=gateway,
                tools={},
                settings=EngineSettings(),
                context=ContextAssembler(documents=memory, retrieval_passages=passages),
            )
            created = await stub.CreateSession(
                memory_pb2.CreateSessionRequest(
                    session=sessions_pb2.Session(
                        goal="What is " + " ".join(corpus.topical(5, min_rank=100)),
                        strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
                        agents=["agents/scout"],
                        inline_agents=[researcher.definition],
                        limits=sessions_pb2.SessionLimits(max_rounds=1),
                    )
                ),
                metadata=METADATA,
                timeout=10,
            )
            session = created.session
            scope = SessionScope(
                tenant=TENANT, session=session.name, documents=scope_docs, goal=session.goal
            )
            started = time.perf_counter()
            run = engine.open_run(TENANT, session, [researcher], scope=scope)
            await engine.run(run)
            await run.recorder.close()
            return time.perf_counter() - started

        with_retrieval = [await session_seconds(3) for _ in range(turns // 4)]
        without = [await session_seconds(0) for _ in range(turns // 4)]
        return {
            "retrieval_call": summary(latencies),
            "session_with_retrieval": summary(with_retrieval),
            "session_without_retrieval": summary(without),
            "added_per_turn_p50_ms": round(
                (percentile(with_retrieval, 0.5) - percentile(without, 0.5)) * 1000, 2
            ),
        }
    finally:
        await channel.close(None)


async def bench_engine(
    engine: str, server: PostgresServer | None, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    if engine == "postgresql":
        assert server is not None
        url = await asyncio.to_thread(create_database, server, "agentmesh_bench_knowledge")
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'knowledge.db'}"
    try:
        async with memory_process(url, workdir / f"memory-{engine}.log") as address:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = memory_pb2_grpc.MemoryServiceStub(channel)
                corpus = Corpus()
                print(f"{engine}: ingesting", file=sys.stderr)
                ingestion = await ingest(stub, corpus, args.chunks)
                if engine == "postgresql":
                    # Steady state: autovacuum would have merged the GIN pending list and
                    # gathered statistics by now; a benchmark right after a bulk load waits
                    # for nobody.
                    await vacuum(url)
                print(f"{engine}: searching", file=sys.stderr)
                searching = await search(stub, corpus, args.queries)
            print(f"{engine}: research turns", file=sys.stderr)
            turns = await retrieval_overhead(address, corpus, args.turns)
    finally:
        if engine == "postgresql" and server is not None:
            await asyncio.to_thread(drop_database, server, url)
    return {"engine": engine, "ingestion": ingestion, "search": searching, "retrieval": turns}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | passages | ingest text MB/s | ingest PDF pages/s | search p50 / p99 ms "
        "| retrieval p50 / p99 ms | turn +ms (p50) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, i, t = r["search"], r["ingestion"], r["retrieval"]
        lines.append(
            f"| {r['engine']} | {i['passages']:,} | {i['text_mb_per_s']} | {i['pdf_pages_per_s']} "
            f"| {s['all']['p50_ms']} / {s['all']['p99_ms']} "
            f"| {t['retrieval_call']['p50_ms']} / {t['retrieval_call']['p99_ms']} "
            f"| {t['added_per_turn_p50_ms']} |"
        )
    lines += ["", "| engine | query | p50 ms | p99 ms | mean results |", "|---|---|---|---|---|"]
    for r in results:
        for kind, figures in r["search"]["by_kind"].items():
            lines.append(
                f"| {r['engine']} | {kind} | {figures['p50_ms']} | {figures['p99_ms']} "
                f"| {figures['mean_results']} |"
            )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--chunks", type=int, default=100_000, help="passages to index")
    parser.add_argument("--queries", type=int, default=300, help="searches to time")
    parser.add_argument("--turns", type=int, default=100, help="retrievals to time")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    server = await asyncio.to_thread(postgres_server) if "postgresql" in engines else None
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="agentmesh-bench-knowledge-") as folder:
            for engine in engines:
                results.append(await bench_engine(engine, server, Path(folder), args))
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    document = {
        "command": " ".join(["python", "bench/knowledge/run.py", *sys.argv[1:]]),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "postgres": server.how if server is not None else None,
        },
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
