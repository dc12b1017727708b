"""Benchmark of the memory service's event log, through the gRPC API, on PostgreSQL and SQLite.

    uv run --frozen --all-packages python bench/memory/run.py            # both engines
    uv run --frozen --all-packages python bench/memory/run.py --engine postgresql

Each memory server runs as its own process (``python -m agentmesh_memory``) on a fresh
database; this process is the client. Measured:

* append throughput for one session: events/s with batches of 1 and of 32, from one client
  (each call waits for the previous) and from 8 concurrent clients on the same session;
* watch latency: from ``AppendEvents`` returning to a ``WatchEvents`` client receiving the
  event, p50/p99, with the watcher on the same replica and (PostgreSQL) on a second replica
  of the same database; events are appended one at a time with a short pause between them;
* replay: events/s for one ``WatchEvents`` reading a finished 10,000-event session from 0.

Writes ``bench/memory/results.json`` and prints a Markdown table. Loopback only, bounded in
count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_cli.mesh import MEMORY, ServiceProcess
from agentmesh_memory.testing import PostgresServer, create_database, drop_database, postgres_server

HERE = Path(__file__).resolve().parent
TENANT = (("x-agentmesh-tenant", "bench"),)
TEXT = "token " * 4  # a typical small content delta


def delta(i: int) -> events_pb2.SessionEvent:
    return events_pb2.SessionEvent(
        agent="agents/writer",
        message_id="m1",
        content_delta=events_pb2.ContentDelta(text=f"{TEXT}{i}"),
    )


@asynccontextmanager
async def memory_process(url: str, log: Path, *, migrate: bool) -> AsyncIterator[str]:
    env = {
        "AGENTMESH_MEMORY_PORT": "0",
        "AGENTMESH_MEMORY_METRICS_PORT": "off",
        "AGENTMESH_MEMORY_DATABASE_URL": url,
        "AGENTMESH_MEMORY_MIGRATE_ON_START": "true" if migrate else "false",
        "AGENTMESH_MEMORY_LOG_LEVEL": "WARNING",
        "AGENTMESH_MEMORY_GRACE_SECONDS": "2",
    }
    process = ServiceProcess(MEMORY, env, log_path=log)
    await process.start()
    try:
        await process.wait_healthy(30)
        yield process.address
    finally:
        await process.stop(grace=10)


async def new_session(stub: memory_pb2_grpc.MemoryServiceStub) -> str:
    response = await stub.CreateSession(
        memory_pb2.CreateSessionRequest(session=sessions_pb2.Session(goal="bench")),
        metadata=TENANT,
        timeout=10,
    )
    return str(response.session.name)


async def append(stub: memory_pb2_grpc.MemoryServiceStub, session: str, events: list[Any]) -> int:
    response = await stub.AppendEvents(
        memory_pb2.AppendEventsRequest(session=session, events=events), metadata=TENANT, timeout=30
    )
    return int(response.last_seq)


async def throughput(address: str, batch: int, clients: int, total_events: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        session = await new_session(stub)
        await append(stub, session, [delta(0)])  # warm the connection and the session row
        calls_per_client = max(1, total_events // (batch * clients))
        events = [delta(i) for i in range(batch)]

        async def client() -> None:
            for _ in range(calls_per_client):
                await append(stub, session, events)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        return calls_per_client * clients * batch / elapsed


async def watch_latency(writer: str, reader: str, samples: int) -> dict[str, float]:
    async with (
        grpc.aio.insecure_channel(writer) as writer_channel,
        grpc.aio.insecure_channel(reader) as reader_channel,
    ):
        write = memory_pb2_grpc.MemoryServiceStub(writer_channel)
        read = memory_pb2_grpc.MemoryServiceStub(reader_channel)
        session = await new_session(write)
        await append(write, session, [delta(0)])
        received: dict[int, float] = {}
        caught_up = asyncio.Event()

        async def watcher() -> None:
            call = read.WatchEvents(memory_pb2.WatchEventsRequest(session=session), metadata=TENANT)
            async for response in call:
                now = time.perf_counter()
                for event in response.events:
                    received[event.seq] = now
                caught_up.set()

        task = asyncio.create_task(watcher())
        await asyncio.wait_for(caught_up.wait(), 10)
        returned: dict[int, float] = {}
        for i in range(samples):
            seq = await append(write, session, [delta(i)])
            returned[seq] = time.perf_counter()
            await asyncio.sleep(0.004)
        await append(
            write,
            session,
            [events_pb2.SessionEvent(session_completed=events_pb2.SessionCompleted())],
        )
        await asyncio.wait_for(task, 30)
        # Receipt can precede the append's own reply; that counts as zero latency.
        latencies = sorted(max(0.0, received[s] - returned[s]) * 1000 for s in returned)
        early = sum(1 for s in returned if received[s] < returned[s])
        return {
            "p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 3),
            "max_ms": round(latencies[-1], 3),
            "samples": len(latencies),
            "received_before_reply": early,
        }


async def replay(address: str, events_total: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        session = await new_session(stub)
        for start in range(0, events_total - 1, 500):
            await append(
                stub, session, [delta(i) for i in range(start, min(start + 500, events_total - 1))]
            )
        await append(
            stub,
            session,
            [events_pb2.SessionEvent(session_completed=events_pb2.SessionCompleted())],
        )
        best = 0.0
        for _ in range(3):
            count = 0
            started = time.perf_counter()
            async for response in stub.WatchEvents(
                memory_pb2.WatchEventsRequest(session=session), metadata=TENANT
            ):
                count += len(response.events)
            elapsed = time.perf_counter() - started
            assert count == events_total, count
            best = max(best, count / elapsed)
        return {"events": events_total, "events_per_second": round(best)}


async def bench_engine(engine: str, server: PostgresServer | None, workdir: Path) -> dict[str, Any]:
    if engine == "postgresql":
        assert server is not None
        url = await asyncio.to_thread(create_database, server, "agentmesh_bench")
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    results: dict[str, Any] = {"engine": engine}
    try:
        async with memory_process(url, workdir / f"{engine}-1.log", migrate=True) as first:
            append_rates: dict[str, float] = {}
            for batch in (1, 32):
                for clients in (1, 8):
                    total = 2_000 if batch == 1 else 32_000
                    rate = await throughput(first, batch, clients, total)
                    append_rates[f"batch_{batch}_clients_{clients}"] = round(rate)
            results["append_events_per_second"] = append_rates
            results["watch_latency_same_replica"] = await watch_latency(first, first, 500)
            if engine == "postgresql":
                async with memory_process(
                    url, workdir / f"{engine}-2.log", migrate=False
                ) as second:
                    results["watch_latency_across_replicas"] = await watch_latency(
                        first, second, 500
                    )
            results["replay"] = await replay(first, 10_000)
    finally:
        if engine == "postgresql" and server is not None:
            await asyncio.to_thread(drop_database, server, url)
    return results


def markdown(all_results: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | append ev/s b=1 (1 / 8 clients) | append ev/s b=32 (1 / 8 clients) "
        "| watch p50 / p99 ms same replica | watch p50 / p99 ms across replicas | replay ev/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in all_results:
        a = r["append_events_per_second"]
        same = r["watch_latency_same_replica"]
        across = r.get("watch_latency_across_replicas")
        across_text = (
            f"{across['p50_ms']} / {across['p99_ms']}"
            if across
            else "n/a (one process per SQLite file)"
        )
        lines.append(
            f"| {r['engine']} | {a['batch_1_clients_1']} / {a['batch_1_clients_8']} "
            f"| {a['batch_32_clients_1']} / {a['batch_32_clients_8']} "
            f"| {same['p50_ms']} / {same['p99_ms']} "
            f"| {across_text} "
            f"| {r['replay']['events_per_second']} |"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    engines = ["postgresql", "sqlite"] if args.engine == "both" else [args.engine]
    server = await asyncio.to_thread(postgres_server) if "postgresql" in engines else None
    all_results = []
    try:
        with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
            for engine in engines:
                print(f"benchmarking {engine} ...", file=sys.stderr, flush=True)
                all_results.append(await bench_engine(engine, server, Path(tmp)))
    finally:
        if server is not None:
            server.stop()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": server.how if server is not None else None,
        },
        "results": all_results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(all_results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
