"""Orchestrator benchmark: overhead per agent turn, sessions/s, and memory per session.

    uv run python bench/orchestrator/run.py                 # SQLite and PostgreSQL, writes
                                                            # results.json + RESULTS.md
    uv run python bench/orchestrator/run.py --engine sqlite # one engine
    uv run python bench/orchestrator/run.py --quick         # a smoke run, writes nothing

Memory, gateway and orchestrator run as separate processes (`ServiceProcess`), as in
production; the local runner is not needed. The gateway's routes file points route `default`
at an instant fake OpenAI-format provider (`fake_provider.py`, its own process) and route
`slow` at the same fake answering after 2 s. This process is the client (`AgentmeshClient`).

Every session is the same: three inline agents, round-robin, two rounds, so six agent turns
(six model calls through the gateway, each streamed, persisted in memory and streamed back).
Per engine it measures:

* overhead per turn at concurrency 1: the client's time per turn, between one turn's
  `message_completed` arriving and the next one's (the first turn counted from the `Run` call),
  minus the fake provider's own time per call; and, from the orchestrator's event timestamps,
  the model call as the orchestrator sees it (`message_started` -> `message_completed`) and
  the orchestrator's bookkeeping between two turns (`message_completed` -> next
  `message_started`);
* sessions/s (create + run to `session_completed`) at concurrency 1 and 32;
* resident memory (RSS) of the orchestrator and the memory service before and after opening
  2,000 idle (PENDING, never run) sessions, and while 200 sessions on the slow route are asked
  to run at once: the orchestrator admits `max_running_sessions` of them (64) and refuses the
  rest with RESOURCE_EXHAUSTED and a RetryInfo delay, after which they ask again; the memory
  per running session is measured over the sessions admitted.

`soak.py` next to this file runs load for minutes and samples the orchestrator's RSS over time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from agentmesh.common.v1 import agents_pb2, generation_pb2, sessions_pb2
from agentmesh_cli.mesh import GATEWAY, MEMORY, ORCHESTRATOR, create_api_key, start_mesh, stop_mesh
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import FailedPrecondition, ResourceExhausted
from agentmesh_memory.testing import create_database, drop_database, postgres_server

HERE = Path(__file__).parent
AGENTS = ("alice", "bob", "carol")
ROUNDS = 2
TURNS = len(AGENTS) * ROUNDS
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    c1_sessions: int = 30
    c32_sessions: int = 96
    idle_sessions: int = 2000
    running_sessions: int = 200
    warmup_sessions: int = 5
    max_running_sessions: int = 64  # the orchestrator's admission bound (its default)


QUICK = Plan(
    c1_sessions=5, c32_sessions=32, idle_sessions=200, running_sessions=32, warmup_sessions=2
)


async def admitted(call: Callable[[], Awaitable[T]]) -> T:
    """`call`, asked again after each RESOURCE_EXHAUSTED once its RetryInfo delay has passed."""
    while True:
        try:
            return await call()
        except ResourceExhausted as refused:
            await asyncio.sleep(refused.retry_after or 1.0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def member(agent_id: str, route: str) -> agents_pb2.AgentDefinition:
    return agents_pb2.AgentDefinition(
        name=agent_id,
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        model=agents_pb2.ModelSelection(route=route),
        prompts=agents_pb2.AgentPrompts(system=f"You are {agent_id}."),
        generation=generation_pb2.GenerationConfig(max_tokens=24),
    )


async def create(client: AgentmeshClient, route: str = "default") -> str:
    session = await client.create_session(
        goal="Agree on a plan",
        inline_agents=[member(a, route) for a in AGENTS],
        strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=ROUNDS),
    )
    return session.name


@dataclass
class SessionTiming:
    create: float
    run: float
    client_turns: list[float]  # client arrival gaps between message_completed events
    steady_turn: float  # first to last message_completed arrival, per turn in between
    end: float  # last message_completed -> session_completed arrival
    model_calls: list[float]  # message_started -> message_completed, orchestrator clock
    between_turns: list[float]  # message_completed -> next message_started, orchestrator clock


async def timed_session(client: AgentmeshClient) -> SessionTiming:
    started = time.perf_counter()
    name = await create(client)
    created = time.perf_counter()
    completed_at: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    last = ""
    async for event in client.run(name):
        last = str(event.WhichOneof("payload"))
        if last == "message_completed":
            completed_at.append(time.perf_counter())
            ends.append(event.time.ToNanoseconds())
        elif last == "message_started":
            starts.append(event.time.ToNanoseconds())
    finished = time.perf_counter()
    if last != "session_completed" or len(ends) != TURNS or len(starts) != TURNS:
        raise RuntimeError(f"{name}: ended with {last}, {len(ends)} turns of {TURNS}")
    marks = [created, *completed_at]
    return SessionTiming(
        create=created - started,
        run=finished - created,
        client_turns=[b - a for a, b in itertools.pairwise(marks)],
        steady_turn=(completed_at[-1] - completed_at[0]) / (TURNS - 1),
        end=finished - completed_at[-1],
        model_calls=[(e - s) / 1e9 for s, e in zip(starts, ends, strict=True)],
        between_turns=[(s - e) / 1e9 for e, s in zip(ends, starts[1:], strict=False)],
    )


async def provider_stats(http: httpx.AsyncClient) -> tuple[int, float]:
    reply = (await http.get("/stats")).json()
    return int(reply["requests"]), float(reply["busy_seconds"])


def log_sizes(logs: dict[str, Path]) -> dict[str, int]:
    return {name: path.stat().st_size for name, path in logs.items()}


def rpc_counts(logs: dict[str, Path], since: dict[str, int]) -> dict[str, Counter[str]]:
    """RPCs each service served since `since`, from its access log (one JSON line per RPC)."""
    counts: dict[str, Counter[str]] = {}
    for name, path in logs.items():
        counts[name] = Counter()
        with path.open("rb") as log:
            log.seek(since[name])
            for line in log:
                if b'"rpc_method"' not in line:
                    continue
                method = json.loads(line).get("rpc_method", "")
                counts[name][method.rsplit("/", 1)[-1]] += 1
    return counts


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def sessions_at(
    client: AgentmeshClient,
    http: httpx.AsyncClient,
    processes: dict[str, psutil.Process],
    logs: dict[str, Path],
    concurrency: int,
    sessions: int,
) -> dict[str, Any]:
    timings: list[SessionTiming] = []
    remaining = sessions

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            timings.append(await timed_session(client))

    calls_before, busy_before = await provider_stats(http)
    logs_before = log_sizes(logs)
    cpu_before = {name: cpu_seconds(p) for name, p in processes.items()}
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in processes.items()}
    cpu["client"] = time.process_time() - client_before
    calls_after, busy_after = await provider_stats(http)
    rpcs = rpc_counts(logs, logs_before)
    provider_per_call = (busy_after - busy_before) / max(calls_after - calls_before, 1)
    overhead = [s.steady_turn - provider_per_call for s in timings]
    amortized = [s.run / TURNS - provider_per_call for s in timings]
    model_calls = [t for s in timings for t in s.model_calls]
    between = [t for s in timings for t in s.between_turns]
    row = {
        "concurrency": concurrency,
        "sessions": sessions,
        "sessions_per_second": round(sessions / elapsed, 2),
        "turns_per_second": round(sessions * TURNS / elapsed, 1),
        "provider_ms_per_call": ms(provider_per_call),
        "overhead_per_turn_p50_ms": ms(pct(overhead, 0.5)),
        "overhead_per_turn_p99_ms": ms(pct(overhead, 0.99)),
        "amortized_per_turn_p50_ms": ms(pct(amortized, 0.5)),
        "amortized_per_turn_p99_ms": ms(pct(amortized, 0.99)),
        "first_turn_p50_ms": ms(pct([s.client_turns[0] - provider_per_call for s in timings], 0.5)),
        "end_p50_ms": ms(pct([s.end for s in timings], 0.5)),
        "model_call_p50_ms": ms(pct(model_calls, 0.5)),
        "model_call_p99_ms": ms(pct(model_calls, 0.99)),
        "between_turns_p50_ms": ms(pct(between, 0.5)),
        "between_turns_p99_ms": ms(pct(between, 0.99)),
        "create_p50_ms": ms(pct([s.create for s in timings], 0.5)),
        "session_p50_ms": ms(pct([s.create + s.run for s in timings], 0.5)),
        "session_p99_ms": ms(pct([s.create + s.run for s in timings], 0.99)),
        "cpu_ms_per_turn": {name: ms(used / (sessions * TURNS)) for name, used in cpu.items()},
        "rpcs_per_turn": {
            name: {
                method: round(count / (sessions * TURNS), 2)
                for method, count in counted.most_common()
            }
            for name, counted in rpcs.items()
        },
    }
    print(json.dumps(row), flush=True)
    return row


def rss_mb(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


async def idle_memory(
    client: AgentmeshClient, orchestrator: psutil.Process, memory: psutil.Process, count: int
) -> dict[str, Any]:
    """RSS before and after opening `count` sessions that are created and never run."""
    await asyncio.sleep(1.0)
    before = rss_mb(orchestrator), rss_mb(memory)
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await create(client)

    await asyncio.gather(*(worker() for _ in range(32)))
    await asyncio.sleep(1.0)
    after = rss_mb(orchestrator), rss_mb(memory)
    row = {
        "sessions": count,
        "orchestrator_rss_mb_before_after": [round(before[0], 1), round(after[0], 1)],
        "memory_rss_mb_before_after": [round(before[1], 1), round(after[1], 1)],
        "orchestrator_kb_per_idle_session": round((after[0] - before[0]) * 1024 / count, 2),
        "memory_kb_per_idle_session": round((after[1] - before[1]) * 1024 / count, 2),
    }
    print(json.dumps(row), flush=True)
    return row


async def running_memory(
    client: AgentmeshClient,
    orchestrator: psutil.Process,
    memory: psutil.Process,
    count: int,
    bound: int,
) -> dict[str, Any]:
    """RSS while `count` sessions on the slow route ask to run at once (the orchestrator admits
    `bound` of them and refuses the others, which ask again after the RetryInfo delay), minus
    the RSS before, per session admitted."""
    names = await asyncio.gather(*(admitted(lambda: create(client, "slow")) for _ in range(count)))
    await asyncio.sleep(1.0)
    before = rss_mb(orchestrator), rss_mb(memory)
    target = min(count, bound) if bound > 0 else count
    in_turn: set[str] = set()
    refusals = 0
    everyone_in_turn = asyncio.Event()

    async def run(name: str) -> str:
        nonlocal refusals
        while True:
            last = ""
            try:
                async for event in client.run(name):
                    last = str(event.WhichOneof("payload"))
                    if last == "message_started" and name not in in_turn:
                        in_turn.add(name)
                        if len(in_turn) >= target:
                            everyone_in_turn.set()
                return last
            except ResourceExhausted as refused:
                refusals += 1
                await asyncio.sleep(refused.retry_after or 1.0)

    runs = {name: asyncio.create_task(run(name)) for name in names}
    await asyncio.wait_for(everyone_in_turn.wait(), 120)
    peak = list(before)
    sampled_at = time.perf_counter()
    while time.perf_counter() - sampled_at < 1.0:  # within the first (2 s) model call
        peak = [max(peak[0], rss_mb(orchestrator)), max(peak[1], rss_mb(memory))]
        await asyncio.sleep(0.05)
    admitted_count = len(in_turn)
    # Those still waiting for a place stop asking; then every session is cancelled (rather
    # than run to the end: 1,200 slow turns would take minutes on 2 CPUs).
    waiting = [task for name, task in runs.items() if name not in in_turn]
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)

    async def cancel(name: str) -> None:
        for _ in range(20):
            try:
                await admitted(lambda: client.cancel_session(name))
                return
            except FailedPrecondition:  # a Run was being admitted at that moment: again
                await asyncio.sleep(0.2)

    await asyncio.gather(*(cancel(name) for name in names))
    endings = await asyncio.wait_for(
        asyncio.gather(*(runs[name] for name in names if name in in_turn)), 120
    )
    if set(endings) != {"session_cancelled"}:
        raise RuntimeError(f"slow sessions ended with {set(endings)}")
    row = {
        "sessions": count,
        "admission_bound": bound,
        "admitted": admitted_count,
        "refusals": refusals,
        "provider_delay_seconds": 2.0,
        "orchestrator_rss_mb_before_peak": [round(before[0], 1), round(peak[0], 1)],
        "memory_rss_mb_before_peak": [round(before[1], 1), round(peak[1], 1)],
        "orchestrator_kb_per_running_session": round(
            (peak[0] - before[0]) * 1024 / admitted_count, 2
        ),
        "memory_kb_per_running_session": round((peak[1] - before[1]) * 1024 / admitted_count, 2),
    }
    print(json.dumps(row), flush=True)
    return row


@dataclass
class Fake:
    port: int
    process: asyncio.subprocess.Process = field(repr=False)


@contextlib.asynccontextmanager
async def fake_provider() -> AsyncIterator[Fake]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "fake_provider.py"), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
        yield Fake(port, process)
    finally:
        process.kill()
        await process.wait()


def routes_file(path: Path, port: int) -> Path:
    lines = ["routes:"]
    for route, prefix in (("default", ""), ("slow", "/slow")):
        lines += [
            f"  {route}:",
            f"    - name: fake-{route}",
            "      provider: openai_compatible",
            "      model: bench-model",
            f"      base_url: http://127.0.0.1:{port}{prefix}/v1",
            "      timeout: 30",
            "      max_retries: 0",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def bench_engine(engine: str, database_url: str, workdir: Path, plan: Plan) -> dict[str, Any]:
    print(f"benchmarking the orchestrator on {engine} ...", file=sys.stderr, flush=True)
    async with fake_provider() as fake:
        specs = (MEMORY, GATEWAY, ORCHESTRATOR)
        extra = {
            MEMORY.name: {"AGENTMESH_MEMORY_METRICS_PORT": "0"},
            GATEWAY.name: {
                "AGENTMESH_GATEWAY_METRICS_PORT": "0",
                "AGENTMESH_GATEWAY_ROUTES_FILE": str(
                    routes_file(workdir / "routes.yaml", fake.port)
                ),
            },
            ORCHESTRATOR.name: {
                "AGENTMESH_ORCHESTRATOR_METRICS_PORT": "0",
                "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
                "AGENTMESH_ORCHESTRATOR_TOKENS_PER_MINUTE": "0",
                "AGENTMESH_ORCHESTRATOR_MAX_RUNNING_SESSIONS": str(plan.max_running_sessions),
            },
        }
        if database_url:
            extra[MEMORY.name]["AGENTMESH_MEMORY_DATABASE_URL"] = database_url
        running = await start_mesh(
            workdir, ports={s.name: 0 for s in specs}, specs=specs, extra_env=extra
        )
        try:
            services = {s.spec.name: s for s in running}
            processes: dict[str, psutil.Process] = {}
            for service in running:
                assert service.process is not None
                processes[service.spec.name] = psutil.Process(service.process.pid)
            logs = {name: workdir / "logs" / f"{name}.log" for name in processes}
            key = await create_api_key(services[MEMORY.name].address, "bench", "bench")
            orchestrator, memory = processes[ORCHESTRATOR.name], processes[MEMORY.name]
            async with (
                AgentmeshClient(
                    services[ORCHESTRATOR.name].address, api_key=key, timeout=60
                ) as client,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{fake.port}") as http,
            ):
                for _ in range(plan.warmup_sessions):
                    await timed_session(client)
                rows = [
                    await sessions_at(client, http, processes, logs, 1, plan.c1_sessions),
                    await sessions_at(client, http, processes, logs, 32, plan.c32_sessions),
                ]
                idle = await idle_memory(client, orchestrator, memory, plan.idle_sessions)
                busy = await running_memory(
                    client,
                    orchestrator,
                    memory,
                    plan.running_sessions,
                    plan.max_running_sessions,
                )
                rss = {name: round(rss_mb(p), 1) for name, p in processes.items()}
        finally:
            await stop_mesh(running)
    return {"engine": engine, "rows": rows, "idle": idle, "running": busy, "rss_mb_end": rss}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument(
        "--running-sessions", type=int, help="sessions asked to run at once in the RSS phase"
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.running_sessions is not None:
        plan = replace(plan, running_sessions=args.running_sessions)
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = []
    server = await asyncio.to_thread(postgres_server) if "postgresql" in engines else None
    try:
        for engine in engines:
            with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
                url = ""
                if server is not None and engine == "postgresql":
                    url = await asyncio.to_thread(create_database, server, "agentmesh_bench")
                try:
                    results.append(await bench_engine(engine, url, Path(tmp), plan))
                finally:
                    if url and server is not None:
                        await asyncio.to_thread(drop_database, server, url)
    finally:
        if server is not None:
            server.stop()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
            "postgres": server.how if server is not None else None,
            "load_average_1m_before_after": [
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
        },
        "turns_per_session": TURNS,
        "plan": plan.__dict__,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    if args.quick:
        print(json.dumps(report, indent=2))
        return 0
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)
    print((HERE / "RESULTS.md").read_text())
    return 0


def write_markdown(report: dict[str, Any]) -> None:
    machine = report["machine"]
    lines = [
        "# Orchestrator benchmark",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['system']}), Python {machine['python']};"
        f" PostgreSQL: {machine['postgres'] or 'not run'}. The client, the fake provider and the"
        " three services share the same CPUs (1-minute load average before/after:"
        f" {machine['load_average_1m_before_after']}). Whole run: {report['wall_seconds']} s.",
        "",
        "Command: `uv run --frozen --all-packages python bench/orchestrator/run.py`"
        " (also run by `make bench`)",
        "",
        "Memory, gateway and orchestrator are separate processes (default settings, log level"
        " INFO, rate limits off); the gateway streams from an instant fake OpenAI-format provider"
        " on loopback. Each session: 3 inline agents, round-robin, 2 rounds = "
        f"{report['turns_per_session']} agent turns.",
        "",
        "## Overhead per agent turn and sessions/s",
        "",
        "| engine | conc. | sessions | sessions/s | turn p50 / p99 ms |"
        " first turn p50 ms | end p50 ms | amortized turn p50 / p99 ms |"
        " model call p50 / p99 ms | between turns p50 / p99 ms | create p50 ms |"
        " CPU ms/turn: orchestrator / gateway / memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        for r in result["rows"]:
            cpu = r["cpu_ms_per_turn"]
            lines.append(
                f"| {result['engine']} | {r['concurrency']} | {r['sessions']} |"
                f" {r['sessions_per_second']} | {r['overhead_per_turn_p50_ms']} /"
                f" {r['overhead_per_turn_p99_ms']} | {r['first_turn_p50_ms']} |"
                f" {r['end_p50_ms']} | {r['amortized_per_turn_p50_ms']} /"
                f" {r['amortized_per_turn_p99_ms']} | {r['model_call_p50_ms']} /"
                f" {r['model_call_p99_ms']} | {r['between_turns_p50_ms']} /"
                f" {r['between_turns_p99_ms']} | {r['create_p50_ms']} |"
                f" {cpu['orchestrator']} / {cpu['inference-gateway']} / {cpu['memory']} |"
            )
    lines += [
        "",
        "* **turn** (the overhead per agent turn): on the client's clock, per session, the time"
        " from the first turn's `message_completed` arriving to the last one's, divided by the"
        " turns in between, minus the fake provider's own time per call (under 1 ms); p50 and"
        " p99 over sessions. It includes everything the orchestrator does for a turn: building"
        " the prompt, the gateway call, storing the turn in memory (events, message, ledger"
        " row, session state) and streaming its events back. It is measured across turns"
        " rather than between two events because a turn's events can reach the client in the"
        " same commit as the next one's (the writer commits whatever is queued).",
        "* **first turn**: `Run` call -> the first `message_completed` arriving, minus the"
        " provider's time: a turn plus starting the session (the session read, the lease,"
        " the tenant's tools, the start commit). **end**: the last `message_completed` ->"
        " `session_completed` arriving. **amortized turn**: the whole `Run` over the number of"
        " turns (start and end included), minus the provider's time.",
        "* **model call**: `message_started` -> `message_completed` on the orchestrator's clock"
        " (event timestamps): the gateway call and the events written while it streams.",
        "* **between turns**: `message_completed` -> the next `message_started`: the"
        " orchestrator's bookkeeping between two turns (no memory call waits there now).",
        "* **CPU ms/turn**: CPU time of each process over the scenario, per turn.",
        "",
        "RPCs per turn at concurrency 1 (from the services' access logs):",
        "",
    ]
    for result in report["results"]:
        row = next(r for r in result["rows"] if r["concurrency"] == 1)
        for service, methods in row["rpcs_per_turn"].items():
            if methods:
                total = round(sum(methods.values()), 1)
                listed = ", ".join(f"{m} {n}" for m, n in methods.items())
                lines.append(f"* {result['engine']}, {service}: {total} ({listed})")
    lines += [
        "",
        "## Resident memory per session",
        "",
        "| engine | idle sessions | orchestrator KB/idle session | memory service KB/idle"
        " session | running sessions | orchestrator KB/running session | memory service"
        " KB/running session |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        idle, busy = result["idle"], result["running"]
        lines.append(
            f"| {result['engine']} | {idle['sessions']} |"
            f" {idle['orchestrator_kb_per_idle_session']} | {idle['memory_kb_per_idle_session']} |"
            f" {busy['sessions']} ({busy.get('admitted', busy['sessions'])} admitted,"
            f" {busy.get('refusals', 0)} refusals) |"
            f" {busy['orchestrator_kb_per_running_session']} |"
            f" {busy['memory_kb_per_running_session']} |"
        )
    lines += [
        "",
        "Idle: RSS before and after creating the sessions (PENDING, never run), divided by"
        " their number. Running: sessions on a route whose provider answers after 2 s all ask"
        " to run at once; the orchestrator admits `max_running_sessions` (64) and refuses the"
        " rest with RESOURCE_EXHAUSTED + RetryInfo (they ask again after the delay: the"
        " refusals column); once every admitted one has begun its first model call, the peak"
        " RSS over the next second minus the RSS before, divided by the sessions admitted;"
        " then all are cancelled.",
        "RSS in MB (orchestrator idle before/after, running before/peak): "
        + "; ".join(
            f"{r['engine']}: {r['idle']['orchestrator_rss_mb_before_after']},"
            f" {r['running']['orchestrator_rss_mb_before_peak']}"
            for r in report["results"]
        )
        + ". Values within about ±1 KB per idle session are noise: RSS moves by a few"
        " hundred KB between samples on its own.",
        "",
        "## Against the targets",
        "",
    ]
    for result in report["results"]:
        one = next(r for r in result["rows"] if r["concurrency"] == 1)
        idle_kb = result["idle"]["orchestrator_kb_per_idle_session"]
        turn_ms = one["overhead_per_turn_p50_ms"]
        lines.append(
            f"* {result['engine']}: overhead per turn p50 {turn_ms} ms against < 5 ms:"
            f" **{'met' if turn_ms < 5 else 'missed'}**; orchestrator memory per idle session"
            f" {idle_kb} KB against <= 1 MB: **{'met' if idle_kb <= 1024 else 'missed'}**."
        )
    lines += [
        "",
        "## What bounds the numbers",
        "",
        "A turn is one gateway call and one memory write. The session's writer queues"
        " everything the turn records (`message_started`, the text, the ledger row,"
        " `message_completed`, the message, the session's state) and stores it with one"
        " `CommitStep` in one transaction, in the background: the next turn starts while the"
        " last one is committed, and what is queued meanwhile goes in the next commit, so"
        " there are fewer commits than turns (CommitStep per turn above). The conversation is"
        " kept in the run (read once per run, not at all for a fresh session) and the `Run`"
        " stream is fed from the commits, so no memory read sits between two turns (between"
        " turns ~0.2 ms). What is left of a turn is the model call through the gateway"
        " (orchestrator -> gateway -> provider and back, ~3 ms here, the gateway's own CPU"
        " ~1.7 ms a call). The first turn also carries starting the session: reading it,"
        " taking the lease and reading the tenant's tools (three memory calls, ~1-2 ms each)"
        " and the first commit before its events can be seen.",
        "",
        "At concurrency 32 all five processes share 2 CPUs; the memory service spends ~4-5 ms"
        " of CPU per turn (a CommitStep costs it ~2.5 ms in-process, plus the per-session calls"
        " amortized over 6 turns) and is the first to saturate; the times at concurrency 32 are"
        " queueing. Commits then hold several turns each, so a session's `message_completed`"
        " events arrive in bursts and the per-turn figure at concurrency 32 says little; the"
        " sessions/s column is the one to read there.",
        "",
        "## Run to run",
        "",
        "Before this write path (the same bench, 2026-11-21, load average 2.6-8.2): a turn was"
        " about nine sequential memory calls, 38.8-47.6 ms per turn on SQLite and 44.5-59.0 ms"
        " on PostgreSQL (measured then between consecutive `message_completed` events), and"
        " 2.4-3.9 sessions/s at concurrency 32. With it, over two runs the same day: turn p50"
        " 2.7-3.7 ms (SQLite) and 3.3-3.8 ms (PostgreSQL), p99 4.2-5.7 ms; amortized over a"
        " whole session 5.5-7.4 ms; 20-32 sessions/s at concurrency 1 and 32.",
        "",
        "Memory per session is far inside its target: an idle (PENDING) session costs the"
        " orchestrator nothing measurable (it is a row in memory, nothing is held in the"
        " orchestrator until it runs), and a running one about 0.1 MB in each process.",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    if "--markdown-only" in sys.argv:  # re-render RESULTS.md from results.json
        write_markdown(json.loads((HERE / "results.json").read_text()))
    else:
        sys.exit(asyncio.run(main()))
