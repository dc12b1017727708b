"""Web edge benchmark: SSE delivery latency, idle streams' memory, CPU per event, JSON overhead.

    uv run python bench/web/run.py            # writes results.json + RESULTS.md
    uv run python bench/web/run.py --quick    # a smoke run, writes nothing

Memory (on PostgreSQL, as in production: 127.0.0.1:5432 or a throwaway cluster), orchestrator
and the web edge run as separate processes (`ServiceProcess`); no model is called. This process
is every client. It measures:

* **delivery at 100 concurrent streams**: 100 sessions, each followed by one SSE client through
  the edge; a driver appends `content_delta` events to every session through the memory
  service's `AppendEvents` (4 per second per session). Latency is the client's receipt time
  minus the moment `AppendEvents` returned (the event is committed and visible to watchers):
  the whole path memory watch -> orchestrator `StreamSession` -> edge -> SSE. The same run over
  gRPC `StreamSession` straight to the orchestrator gives the edge's share;
* **CPU per relayed event**: the edge's CPU time (user + system) during that run, less what it
  spends idle with the same streams open (measured just before), divided by the events it wrote;
* **idle streams**: the edge's resident memory before and after opening 1,000 SSE streams on
  idle sessions (10 per session), per stream; the orchestrator's too;
* **JSON unary overhead**: `GET /v1/sessions/{id}` through the edge against `GetSession` over
  gRPC to the orchestrator, sequentially, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil

from agentmesh.common.v1 import agents_pb2, events_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_cli.mesh import (
    MEMORY,
    ORCHESTRATOR,
    WEB,
    ServiceProcess,
    create_api_key,
    start_mesh,
    stop_mesh,
)
from agentmesh_client.client import AgentmeshClient
from agentmesh_common import TENANT_METADATA_KEY
from agentmesh_memory.testing import create_database, drop_database, postgres_server

HERE = Path(__file__).parent
TENANT = "bench-web"
IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class Plan:
    streams: int = 100
    events_per_second: float = 4.0
    seconds: float = 15.0
    idle_streams: int = 1000
    unary_calls: int = 500


QUICK = Plan(streams=10, seconds=3.0, idle_streams=50, unary_calls=50)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def rss_mb(process: ServiceProcess) -> float:
    assert process.process is not None
    return psutil.Process(process.process.pid).memory_info().rss / 2**20


def cpu_seconds(process: ServiceProcess) -> float:
    assert process.process is not None
    times = psutil.Process(process.process.pid).cpu_times()
    return float(times.user + times.system)


async def new_sessions(client: AgentmeshClient, count: int) -> list[str]:
    agent = agents_pb2.AgentDefinition(
        name="echo",
        model=agents_pb2.ModelSelection(route="default"),
        prompts=agents_pb2.AgentPrompts(system="Echo."),
    )
    names = []
    for _ in range(count):
        session = await client.create_session(
            goal="Bench", inline_agents=[agent], strategy=sessions_pb2.STRATEGY_ROUND_ROBIN
        )
        names.append(session.name)
    return names


class Driver:
    """Appends one event at a time to each session; remembers when each seq was committed."""

    def __init__(self, memory: str) -> None:
        self._channel = grpc.aio.insecure_channel(memory)
        self._stub = memory_pb2_grpc.MemoryServiceStub(self._channel)
        self.committed: dict[tuple[str, int], float] = {}
        self.called: dict[tuple[str, int], float] = {}

    async def append(self, session: str) -> None:
        event = events_pb2.SessionEvent(
            agent="echo", content_delta=events_pb2.ContentDelta(text="x" * 24)
        )
        called = time.perf_counter()
        reply = await self._stub.AppendEvents(
            memory_pb2.AppendEventsRequest(session=session, events=[event]),
            metadata=((TENANT_METADATA_KEY, TENANT),),
            timeout=10,
        )
        self.committed[(session, reply.last_seq)] = time.perf_counter()
        self.called[(session, reply.last_seq)] = called

    async def run(self, sessions: list[str], per_second: float, seconds: float) -> int:
        interval = 1 / per_second
        deadline = time.perf_counter() + seconds

        async def one(session: str, offset: float) -> int:
            await asyncio.sleep(offset)
            sent = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await self.append(session)
                sent += 1
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
            return sent

        offsets = [i * interval / len(sessions) for i in range(len(sessions))]
        counts = await asyncio.gather(*(one(s, o) for s, o in zip(sessions, offsets, strict=True)))
        return sum(counts)

    async def close(self) -> None:
        await self._channel.close()


async def sse_follow(
    http: aiohttp.ClientSession, session: str, received: dict[tuple[str, int], float]
) -> None:
    async with http.get(f"/v1/{session}/events") as reply:
        reply.raise_for_status()
        async for raw in reply.content:
            if raw.startswith(b"id: "):
                received[(session, int(raw[4:]))] = time.perf_counter()


async def grpc_follow(
    client: AgentmeshClient, session: str, received: dict[tuple[str, int], float]
) -> None:
    async for event in client.events(session):
        received[(session, event.seq)] = time.perf_counter()


async def delivery(
    plan: Plan, label: str, follow: Any, sessions: list[str], memory: str, edge: ServiceProcess
) -> dict[str, Any]:
    received: dict[tuple[str, int], float] = {}
    driver = Driver(memory)
    followers = [asyncio.create_task(follow(s, received)) for s in sessions]
    await asyncio.sleep(1.0)  # every stream open and tailing
    idle_before = cpu_seconds(edge)
    await asyncio.sleep(IDLE_SECONDS)
    idle_per_second = (cpu_seconds(edge) - idle_before) / IDLE_SECONDS
    cpu_before = cpu_seconds(edge)
    run_started = time.perf_counter()
    sent = await driver.run(sessions, plan.events_per_second, plan.seconds)
    await asyncio.sleep(1.0)  # the last events arrive
    edge_cpu = cpu_seconds(edge) - cpu_before
    edge_cpu -= idle_per_second * (time.perf_counter() - run_started)
    for task in followers:
        task.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    await driver.close()
    from_commit = [received[k] - t for k, t in driver.committed.items() if k in received]
    from_call = [received[k] - t for k, t in driver.called.items() if k in received]
    return {
        "framing": label,
        "streams": len(sessions),
        "events_sent": sent,
        "events_received": len(from_commit),
        "p50_ms_from_commit": ms(pct(from_commit, 0.5)),
        "p99_ms_from_commit": ms(pct(from_commit, 0.99)),
        "max_ms_from_commit": ms(max(from_commit, default=float("nan"))),
        "p99_ms_from_append_call": ms(pct(from_call, 0.99)),
        "edge_cpu_seconds": round(edge_cpu, 3),
        "edge_idle_cpu_percent": round(idle_per_second * 100, 2),
        "edge_cpu_us_per_event": round(edge_cpu / max(sent, 1) * 1e6, 1),
    }


async def idle_streams(
    plan: Plan, http: aiohttp.ClientSession, sessions: list[str], mesh: dict[str, ServiceProcess]
) -> dict[str, Any]:
    before = {name: rss_mb(p) for name, p in mesh.items()}

    async def open_one(i: int) -> aiohttp.ClientResponse:
        reply = await http.get(f"/v1/{sessions[i % len(sessions)]}/events")
        reply.raise_for_status()
        return reply

    started = time.perf_counter()
    opened: list[aiohttp.ClientResponse] = []
    for batch in range(0, plan.idle_streams, 100):
        count = min(100, plan.idle_streams - batch)
        opened += await asyncio.gather(*(open_one(batch + i) for i in range(count)))
    open_seconds = time.perf_counter() - started
    await asyncio.sleep(2.0)  # settled
    after = {name: rss_mb(p) for name, p in mesh.items()}
    for reply in opened:
        reply.close()
    per_stream = {
        name: round((after[name] - before[name]) * 1024 / plan.idle_streams, 1) for name in mesh
    }
    return {
        "streams": plan.idle_streams,
        "open_seconds": round(open_seconds, 2),
        "rss_mb_before": {k: round(v, 1) for k, v in before.items()},
        "rss_mb_after": {k: round(v, 1) for k, v in after.items()},
        "kb_per_stream": per_stream,
    }


async def unary(
    plan: Plan, http: aiohttp.ClientSession, client: AgentmeshClient, session: str
) -> dict[str, Any]:
    over_http: list[float] = []
    over_grpc: list[float] = []
    for _ in range(plan.unary_calls // 10):  # warm both paths
        await client.get_session(session)
        async with http.get(f"/v1/{session}") as reply:
            await reply.read()
    for _ in range(plan.unary_calls):
        started = time.perf_counter()
        await client.get_session(session)
        over_grpc.append(time.perf_counter() - started)
        started = time.perf_counter()
        async with http.get(f"/v1/{session}") as reply:
            await reply.read()
            assert reply.status == 200
        over_http.append(time.perf_counter() - started)
    return {
        "calls": plan.unary_calls,
        "grpc_p50_ms": ms(pct(over_grpc, 0.5)),
        "grpc_p99_ms": ms(pct(over_grpc, 0.99)),
        "http_p50_ms": ms(pct(over_http, 0.5)),
        "http_p99_ms": ms(pct(over_http, 0.99)),
        "overhead_p50_ms": ms(pct(over_http, 0.5) - pct(over_grpc, 0.5)),
    }


async def bench(plan: Plan) -> dict[str, Any]:
    server = await asyncio.to_thread(postgres_server)
    url = await asyncio.to_thread(create_database, server, "agentmesh_bench_web")
    try:
        return await bench_on(plan, url)
    finally:
        await asyncio.to_thread(drop_database, server, url)
        server.stop()


async def bench_on(plan: Plan, database_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-web-") as scratch:
        data = Path(scratch)
        env = {
            spec.name: {f"{spec.env_prefix}METRICS_PORT": "off"}
            for spec in (MEMORY, ORCHESTRATOR, WEB)
        }
        env[MEMORY.name]["AGENTMESH_MEMORY_DATABASE_URL"] = database_url
        env[ORCHESTRATOR.name] |= {
            "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
            "AGENTMESH_ORCHESTRATOR_TOKENS_PER_MINUTE": "0",
        }
        env[WEB.name] |= {"AGENTMESH_WEB_HTTP_PORT": "0", "AGENTMESH_WEB_LOG_LEVEL": "WARNING"}
        env[ORCHESTRATOR.name] |= {"AGENTMESH_ORCHESTRATOR_LOG_LEVEL": "WARNING"}
        env[MEMORY.name] |= {"AGENTMESH_MEMORY_LOG_LEVEL": "WARNING"}
        running = await start_mesh(
            data,
            ports={MEMORY.name: 0, ORCHESTRATOR.name: 0, WEB.name: 0},
            specs=(MEMORY, ORCHESTRATOR, WEB),
            extra_env=env,
        )
        mesh = {s.spec.name: s for s in running}
        if os.environ.get("BENCH_WEB_PROFILE"):
            print(f"edge pid {mesh[WEB.name].process.pid}", file=sys.stderr, flush=True)  # type: ignore[union-attr]
        try:
            memory, orchestrator, edge = (mesh[s.name] for s in (MEMORY, ORCHESTRATOR, WEB))
            key = await create_api_key(memory.address, TENANT, "bench")
            headers = {"Authorization": f"Bearer {key}"}
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            connector = aiohttp.TCPConnector(limit=0)
            async with (
                AgentmeshClient(orchestrator.address, api_key=key, timeout=30) as client,
                aiohttp.ClientSession(
                    edge.http_url, headers=headers, timeout=timeout, connector=connector
                ) as http,
            ):
                sessions = await new_sessions(client, plan.streams)
                results: dict[str, Any] = {}
                results["delivery_sse"] = await delivery(
                    plan,
                    "sse",
                    lambda s, r: sse_follow(http, s, r),
                    sessions,
                    memory.address,
                    edge,
                )
                fresh = await new_sessions(client, plan.streams)
                results["delivery_grpc"] = await delivery(
                    plan,
                    "grpc (no edge)",
                    lambda s, r: grpc_follow(client, s, r),
                    fresh,
                    memory.address,
                    edge,
                )
                idle = await new_sessions(client, max(1, plan.idle_streams // 10))
                results["idle"] = await idle_streams(plan, http, idle, mesh)
                results["unary"] = await unary(plan, http, client, sessions[0])
                return results
        finally:
            await stop_mesh(running)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(results: dict[str, Any], command: str, seconds: float) -> str:
    sse, direct = results["delivery_sse"], results["delivery_grpc"]
    idle, unary = results["idle"], results["unary"]
    lines = [
        "# Web edge benchmark",
        "",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, Python "
        f"{results['machine']['python']}; load average at the start "
        f"{results['machine']['load_average']}. Command: `{command}` ({seconds:.0f} s).",
        "Memory (PostgreSQL), orchestrator and web edge are separate processes; this process "
        "is every client and the event driver.",
        "",
        "| measure | through the edge (SSE) | gRPC StreamSession (no edge) | target |",
        "|---|---|---|---|",
        f"| delivery from commit, p50 ms, {sse['streams']} streams | "
        f"{sse['p50_ms_from_commit']} | {direct['p50_ms_from_commit']} | |",
        f"| delivery from commit, p99 ms, {sse['streams']} streams | "
        f"{sse['p99_ms_from_commit']} | {direct['p99_ms_from_commit']} | < 20 |",
        f"| events delivered / sent | {sse['events_received']} / {sse['events_sent']} | "
        f"{direct['events_received']} / {direct['events_sent']} | all |",
        f"| edge CPU per relayed event, us | {sse['edge_cpu_us_per_event']} | | |",
        "",
        f"Idle streams: {idle['streams']} SSE streams open on idle sessions: the edge's RSS "
        f"{idle['rss_mb_before']['web']} -> {idle['rss_mb_after']['web']} MB, "
        f"**{idle['kb_per_stream']['web']} KB per stream** (target <= 100); the orchestrator "
        f"{idle['kb_per_stream']['orchestrator']} KB and memory {idle['kb_per_stream']['memory']}"
        " KB per stream (each edge stream is one StreamSession and one memory watch).",
        "",
        f"JSON unary overhead ({unary['calls']} sequential `GET /v1/sessions/{{id}}` vs "
        f"`GetSession` over gRPC): p50 {unary['http_p50_ms']} vs {unary['grpc_p50_ms']} ms, "
        f"**+{unary['overhead_p50_ms']} ms p50** (p99 {unary['http_p99_ms']} vs "
        f"{unary['grpc_p99_ms']} ms).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    info = machine()
    results = asyncio.run(bench(plan))
    results["machine"] = info
    elapsed = time.perf_counter() - started
    command = "uv run --frozen --all-packages python bench/web/run.py"
    print(json.dumps(results, indent=2))
    if not args.quick:
        (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (HERE / "RESULTS.md").write_text(markdown(results, command, elapsed))
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
