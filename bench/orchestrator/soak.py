"""Orchestrator soak: sustained load against real processes; is the orchestrator's RSS flat?

    uv run --frozen --all-packages python bench/orchestrator/soak.py              # 10 minutes
    uv run --frozen --all-packages python bench/orchestrator/soak.py --minutes 3 --concurrency 200
    uv run --frozen --all-packages python bench/orchestrator/soak.py --markdown-only

Memory (SQLite), gateway and orchestrator run as separate processes, as `run.py` starts them,
with the fake OpenAI-format provider. `--concurrency` clients (200) each create a session (three
agents, round-robin, two rounds: six turns) and run it to its end, again and again, for
`--minutes`. The orchestrator keeps its default admission bounds, so most of the time more
sessions ask to run than it admits: a refused call (RESOURCE_EXHAUSTED, REPLICA_AT_CAPACITY)
waits the RetryInfo delay and asks again. Every `--sample-seconds` the RSS of the orchestrator
and the memory service is sampled, with the sessions completed and the calls refused so far.

The verdict: after a warm-up (the first fifth of the run, at least a minute, at most a
third), the orchestrator's RSS is *flat* when neither the difference between the mean of the
last and the first third of the samples nor the least-squares trend over that window exceeds
`--flat-mb` (5 MB). Any call that ends in DEADLINE_EXCEEDED (or any status other than a
refusal) is counted and reported.

Writes `soak.json` and `SOAK.md` next to this file.
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from agentmesh_cli.mesh import GATEWAY, MEMORY, ORCHESTRATOR, create_api_key, start_mesh, stop_mesh
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.errors import AgentmeshError, ResourceExhausted

sys.path.insert(0, str(Path(__file__).parent))
from run import create, fake_provider, routes_file, rss_mb

HERE = Path(__file__).parent
T = TypeVar("T")


@dataclass
class Tally:
    """What the clients saw, so far."""

    endings: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def refused_then_retried(what: str, call: Callable[[], Awaitable[T]], tally: Tally) -> T:
    """`call`, asked again after each refusal once the RetryInfo delay has passed."""
    while True:
        try:
            return await call()
        except ResourceExhausted as refused:
            tally.refused[f"{what}:{refused.reason}"] += 1
            await asyncio.sleep(refused.retry_after or 1.0)


async def one_session(client: AgentmeshClient, tally: Tally) -> None:
    name = await refused_then_retried("CreateSession", lambda: create(client), tally)

    async def run() -> str:
        last = ""
        async for event in client.run(name):
            last = str(event.WhichOneof("payload"))
        return last

    tally.endings[await refused_then_retried("Run", run, tally)] += 1


async def client_loop(client: AgentmeshClient, tally: Tally, until: float) -> None:
    while time.monotonic() < until:
        try:
            await one_session(client, tally)
        except AgentmeshError as error:
            tally.errors[f"{type(error).__name__}:{error.reason}"] += 1
            await asyncio.sleep(0.5)


def trend_mb_per_minute(samples: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of `key` over the samples' times, in MB per minute."""
    xs = [s["elapsed_s"] / 60 for s in samples]
    ys = [s[key] for s in samples]
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def verdict(samples: list[dict[str, float]], seconds: float, flat_mb: float) -> dict[str, Any]:
    warmup = min(max(60.0, seconds / 5), seconds / 3)
    window = [s for s in samples if s["elapsed_s"] >= warmup]
    third = max(len(window) // 3, 1)
    out: dict[str, Any] = {"warmup_s": warmup, "flat_mb": flat_mb, "samples": len(window)}
    for proc in ("orchestrator", "memory"):
        key = f"{proc}_rss_mb"
        first = statistics.fmean(s[key] for s in window[:third])
        last = statistics.fmean(s[key] for s in window[-third:])
        slope = trend_mb_per_minute(window, key)
        span = (window[-1]["elapsed_s"] - window[0]["elapsed_s"]) / 60 if window else 0.0
        out[proc] = {
            "first_third_mean_mb": round(first, 1),
            "last_third_mean_mb": round(last, 1),
            "growth_mb": round(last - first, 1),
            "trend_mb_per_min": round(slope, 3),
            "trend_over_window_mb": round(slope * span, 1),
            "min_mb": round(min(s[key] for s in window), 1),
            "max_mb": round(max(s[key] for s in window), 1),
        }
        out[proc]["flat"] = abs(last - first) <= flat_mb and abs(slope * span) <= flat_mb
    return out


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="orchestrator-soak-") as tmp:
        workdir = Path(tmp)
        async with fake_provider() as fake:
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
                    "AGENTMESH_ORCHESTRATOR_LOG_LEVEL": "WARNING",
                },
            }
            specs = (MEMORY, GATEWAY, ORCHESTRATOR)
            running = await start_mesh(
                workdir, ports={s.name: 0 for s in specs}, specs=specs, extra_env=extra
            )
            try:
                services = {s.spec.name: s for s in running}
                procs = {}
                for service in running:
                    assert service.process is not None
                    procs[service.spec.name] = psutil.Process(service.process.pid)
                key = await create_api_key(services[MEMORY.name].address, "soak", "soak")
                tally = Tally()
                samples: list[dict[str, float]] = []
                async with AgentmeshClient(
                    services[ORCHESTRATOR.name].address, api_key=key, timeout=60
                ) as client:
                    started = time.monotonic()
                    until = started + seconds
                    loops = [
                        asyncio.create_task(client_loop(client, tally, until))
                        for _ in range(args.concurrency)
                    ]
                    while time.monotonic() < until:
                        samples.append(
                            {
                                "elapsed_s": round(time.monotonic() - started, 1),
                                "orchestrator_rss_mb": round(rss_mb(procs[ORCHESTRATOR.name]), 1),
                                "memory_rss_mb": round(rss_mb(procs[MEMORY.name]), 1),
                                "completed": tally.endings["session_completed"],
                                "refused": sum(tally.refused.values()),
                                "errors": sum(tally.errors.values()),
                            }
                        )
                        print(json.dumps(samples[-1]), flush=True)
                        await asyncio.sleep(args.sample_seconds)
                    await asyncio.wait_for(asyncio.gather(*loops), 300)
                    wall = time.monotonic() - started
            finally:
                await stop_mesh(running)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        },
        "command": " ".join(["bench/orchestrator/soak.py", *sys.argv[1:]]),
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "wall_seconds": round(wall, 1),
        "endings": dict(tally.endings),
        "refused": dict(tally.refused),
        "errors": dict(tally.errors),
        "sessions_per_second": round(tally.endings["session_completed"] / wall, 2),
        "verdict": verdict(samples, seconds, args.flat_mb),
        "samples": samples,
    }


def write_markdown(report: dict[str, Any]) -> None:
    machine, result = report["machine"], report["verdict"]
    lines = [
        "# Orchestrator soak",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['system']}), Python {machine['python']};"
        " memory (SQLite), gateway, orchestrator, the fake provider and the client share them"
        f" (1-minute load average at the end: {machine['load_average_1m_end']}).",
        "",
        f"Command: `uv run --frozen --all-packages python {report['command']}`",
        "",
        f"{report['concurrency']} clients, each creating a six-turn session and running it to"
        f" its end, again and again, for {report['minutes']} minutes (wall"
        f" {report['wall_seconds']} s), against the orchestrator's default admission bounds"
        " (64 running sessions, 64 queued runs, 64 concurrent unary RPCs). A refused call"
        " waits the RetryInfo delay and asks again.",
        "",
        "| outcome | count |",
        "|---|---|",
    ]
    lines += [f"| ended `{k}` | {v} |" for k, v in sorted(report["endings"].items())]
    lines += [f"| refused `{k}` | {v} |" for k, v in sorted(report["refused"].items())]
    lines += [f"| error `{k}` | {v} |" for k, v in sorted(report["errors"].items())]
    if not report["errors"]:
        lines.append("| errors (DEADLINE_EXCEEDED or any other) | 0 |")
    lines += [
        "",
        f"Sessions completed per second: {report['sessions_per_second']}.",
        "",
        f"RSS after the warm-up ({result['warmup_s']:.0f} s, {result['samples']} samples):",
        "",
        "| process | first third MB | last third MB | growth MB | trend MB/min |"
        " min / max MB | flat (within"
        f" {result['flat_mb']} MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for proc in ("orchestrator", "memory"):
        row = result[proc]
        lines.append(
            f"| {proc} | {row['first_third_mean_mb']} | {row['last_third_mean_mb']} |"
            f" {row['growth_mb']} | {row['trend_mb_per_min']} |"
            f" {row['min_mb']} / {row['max_mb']} | **{'yes' if row['flat'] else 'no'}** |"
        )
    lines += [
        "",
        "Samples (one a minute):",
        "",
        "| minute | orchestrator RSS MB | memory RSS MB | completed | refused | errors |",
        "|---|---|---|---|---|---|",
    ]
    last_minute = -1
    for sample in report["samples"]:
        minute = int(sample["elapsed_s"] // 60)
        if minute != last_minute:
            last_minute = minute
            lines.append(
                f"| {minute} | {sample['orchestrator_rss_mb']} | {sample['memory_rss_mb']} |"
                f" {sample['completed']} | {sample['refused']} | {sample['errors']} |"
            )
    lines.append("")
    (HERE / "SOAK.md").write_text("\n".join(lines))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--flat-mb", type=float, default=5.0)
    args = parser.parse_args()
    report = await soak(args)
    (HERE / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)
    print((HERE / "SOAK.md").read_text())
    return 0 if report["verdict"]["orchestrator"]["flat"] and not report["errors"] else 1


if __name__ == "__main__":
    if "--markdown-only" in sys.argv:
        write_markdown(json.loads((HERE / "soak.json").read_text()))
    else:
        sys.exit(asyncio.run(main()))
