"""Gateway overhead benchmark: direct httpx streaming vs the same call through agentmesh's
gateway (gRPC ``Generate`` and the OpenAI-compatible HTTP API) and through LiteLLM's proxy.

    uv run python bench/gateway/run.py            # full run, writes results.json + RESULTS.md
    uv run python bench/gateway/run.py --quick    # a smoke run (fewer streams)

A fast fake OpenAI-format server (raw asyncio, HTTP/1.1 keep-alive, chunked SSE) runs in its
own process and answers every request with 64 content chunks, a finish chunk, a usage chunk
and ``[DONE]``. The gateway runs as its own process (``python -m agentmesh_gateway``) with a
route to the fake, its HTTP API authenticated with a tenant key resolved by a memory service
process (SQLite) that also keeps the usage ledger. LiteLLM's proxy (``litellm_proxy.py``:
PyPI, its own venv under ``.work/``, one worker, no retries, a master key, no database) runs
in front of the same fake. This process is the client, with one HTTP load generator for every
HTTP mode: for each mode and each concurrency (1, 16, 64) it measures time to first token and
total time per stream (p50, p99), streams per second, and CPU time of the proxy process per
stream; then the time to first token of cache hits; finally it runs 10,000 streams through
the gateway and samples the gateway's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import psutil

from agentmesh.common.v1 import messages_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_cli.mesh import GATEWAY, MEMORY, ServiceProcess, create_api_key

sys.path.insert(0, str(Path(__file__).parent))
from litellm_proxy import MASTER_KEY, VERSION, LiteLLMProxy

HERE = Path(__file__).parent
CHUNKS = 64
EXPECTED_TEXT = "".join(f" tok{i}" for i in range(CHUNKS))


# --- the fake provider (its own process) ----------------------------------------------------


def _response_body() -> bytes:
    head = (
        '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,'
        '"model":"bench-model","choices":[{"index":0,"delta":'
    )
    events = [head + '{"role":"assistant","content":""},"finish_reason":null}],"usage":null}']
    events += [
        head + json.dumps({"content": f" tok{i}"}) + ',"finish_reason":null}],"usage":null}'
        for i in range(CHUNKS)
    ]
    events.append(head + '{},"finish_reason":"stop"}],"usage":null}')
    events.append(
        '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,'
        '"model":"bench-model","choices":[],"usage":{"prompt_tokens":20,'
        f'"completion_tokens":{CHUNKS},"total_tokens":{CHUNKS + 20}}}}}'
    )
    events.append("[DONE]")
    body = b""
    for event in events:
        data = f"data: {event}\n\n".encode()
        body += f"{len(data):x}\r\n".encode() + data + b"\r\n"
    return body + b"0\r\n\r\n"


async def _serve_fake() -> None:
    body = _response_body()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# --- measurement -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def http_stream(
    client: httpx.AsyncClient,
    url: str,
    model: str = "bench-model",
    key: str = "",
    **extra: Any,
) -> tuple[float, float]:
    """One streamed chat completion: the same load generator for every HTTP mode."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say 64 tokens."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    headers = {"authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    first = 0.0
    text: list[str] = []
    async with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                if not first:
                    first = time.perf_counter() - started
                text.append(chunk["choices"][0]["delta"]["content"])
    assert "".join(text) == EXPECTED_TEXT
    return first, time.perf_counter() - started


REQUEST = inference_pb2.GenerateRequest(
    route="bench",
    messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Say 64 tokens.")],
)


async def gateway_stream(stub: Any) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    async for response in stub.Generate(REQUEST, timeout=60):
        kind = response.event.WhichOneof("event")
        if kind == "delta":
            if not first:
                first = time.perf_counter() - started
        elif kind == "finished":
            assert response.event.finished.text == EXPECTED_TEXT
    return first, time.perf_counter() - started


def cpu_seconds(process: psutil.Process) -> float:
    """CPU of a process and its children (LiteLLM's uvicorn worker)."""
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def scenario(
    name: str,
    run_one: Any,
    concurrency: int,
    streams: int,
    gateway: psutil.Process | None,
    side: psutil.Process | None = None,
) -> dict[str, Any]:
    ttft: list[float] = []
    total: list[float] = []
    remaining = streams

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            first, whole = await run_one()
            ttft.append(first)
            total.append(whole)

    for _ in range(min(20, streams)):  # warm up connections and code paths
        await run_one()
    cpu_before = cpu_seconds(gateway) if gateway else None
    side_before = cpu_seconds(side) if side else None
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    row: dict[str, Any] = {
        "mode": name,
        "concurrency": concurrency,
        "streams": streams,
        "ttft_p50_ms": round(pct(ttft, 0.5) * 1000, 3),
        "ttft_p99_ms": round(pct(ttft, 0.99) * 1000, 3),
        "total_p50_ms": round(pct(total, 0.5) * 1000, 3),
        "total_p99_ms": round(pct(total, 0.99) * 1000, 3),
        "streams_per_second": round(streams / elapsed, 1),
        "client_cpu_ms_per_stream": round(client_cpu / streams * 1000, 3),
    }
    if gateway and cpu_before is not None:
        used = cpu_seconds(gateway) - cpu_before
        row["gateway_cpu_ms_per_stream"] = round(used / streams * 1000, 3)
    if side and side_before is not None:
        used = cpu_seconds(side) - side_before
        row["memory_cpu_ms_per_stream"] = round(used / streams * 1000, 3)
    print(json.dumps(row), flush=True)
    return row


async def main(quick: bool) -> None:
    load_before = os.getloadavg()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--fake-server", stdout=asyncio.subprocess.PIPE
    )
    assert fake.stdout is not None
    port = int((await fake.stdout.readline()).decode())
    base = f"http://127.0.0.1:{port}/v1"
    workdir = HERE / ".work" / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*"):
        old.unlink()
    routes = workdir / "routes.yaml"
    deployment = (
        f"{{name: fake, provider: openai_compatible, model: bench-model, base_url: '{base}',"
        " timeout: 30}"
    )
    routes.write_text(
        f"routes:\n  bench:\n    - {deployment}\n"
        f"  bench-cached:\n    deployments: [{deployment}]\n    cache: {{ttl_seconds: 3600}}\n"
    )
    memory = ServiceProcess(
        MEMORY,
        {
            "AGENTMESH_MEMORY_PORT": "0",
            "AGENTMESH_MEMORY_METRICS_PORT": "off",
            "AGENTMESH_MEMORY_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'memory.db'}",
            "AGENTMESH_MEMORY_LOG_LEVEL": "WARNING",
        },
        log_path=workdir / "memory.log",
    )
    await memory.start()
    key = await create_api_key(memory.address, "bench", "bench")
    gateway = ServiceProcess(
        GATEWAY,
        {
            "AGENTMESH_GATEWAY_PORT": "0",
            "AGENTMESH_GATEWAY_METRICS_PORT": "0",
            "AGENTMESH_GATEWAY_ROUTES_FILE": str(routes),
            "AGENTMESH_GATEWAY_LOG_LEVEL": "WARNING",
            "AGENTMESH_GATEWAY_HTTP_PORT": "0",
            "AGENTMESH_GATEWAY_MEMORY_TARGET": memory.address,
        },
        log_path=workdir / "gateway.log",
    )
    await gateway.start()
    assert gateway.process is not None
    assert memory.process is not None
    assert gateway.http_port, "the gateway announced no HTTP port"
    gw_proc = psutil.Process(gateway.process.pid)
    mem_proc = psutil.Process(memory.process.pid)
    agentmesh_url = f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions"
    plan = {1: 200, 16: 1600, 64: 3200} if not quick else {1: 50, 16: 160, 64: 320}
    # LiteLLM spends ~25x the CPU per stream: fewer streams keep its part of the run short.
    litellm_plan = {1: 100, 16: 400, 64: 640} if not quick else {1: 30, 16: 64, 64: 128}
    rows: list[dict[str, Any]] = []
    memory_soak: dict[str, Any] = {}
    try:
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        async with (
            httpx.AsyncClient(limits=limits, timeout=60) as client,
            grpc.aio.insecure_channel(gateway.address) as channel,
            LiteLLMProxy(base, workdir) as litellm,
        ):
            lt_proc = psutil.Process(litellm.pid)
            litellm_url = litellm.url + "/v1/chat/completions"
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for concurrency, streams in plan.items():
                rows.append(
                    await scenario(
                        "direct httpx",
                        lambda: http_stream(client, base + "/chat/completions"),
                        concurrency,
                        streams,
                        None,
                    )
                )
                rows.append(
                    await scenario(
                        "gateway gRPC", lambda: gateway_stream(stub), concurrency, streams, gw_proc
                    )
                )
                rows.append(
                    await scenario(
                        "agentmesh HTTP",
                        lambda: http_stream(client, agentmesh_url, "bench", key),
                        concurrency,
                        streams,
                        gw_proc,
                        mem_proc,
                    )
                )
                rows.append(
                    await scenario(
                        "LiteLLM HTTP",
                        lambda: http_stream(client, litellm_url, "bench", MASTER_KEY),
                        concurrency,
                        litellm_plan[concurrency],
                        lt_proc,
                    )
                )
            rows.append(
                await scenario(
                    "agentmesh HTTP cache hit",
                    lambda: http_stream(client, agentmesh_url, "bench-cached", key, temperature=0),
                    1,
                    plan[1] * 2,
                    gw_proc,
                    mem_proc,
                )
            )
            total_streams = 10_000 if not quick else 1_000
            samples: list[tuple[int, float]] = []
            done = 0

            async def worker(count: int) -> None:
                nonlocal done
                for _ in range(count):
                    await gateway_stream(stub)
                    done += 1
                    if done % (total_streams // 10) == 0:
                        samples.append((done, gw_proc.memory_info().rss / 2**20))

            await asyncio.gather(*(worker(total_streams // 50) for _ in range(50)))
            memory_soak = {
                "streams": total_streams,
                "rss_mb_samples": [[n, round(mb, 1)] for n, mb in samples],
                "rss_growth_mb_after_first_tenth": round(samples[-1][1] - samples[0][1], 1),
            }
            print(json.dumps(memory_soak), flush=True)
    finally:
        await gateway.stop(grace=5)
        await memory.stop(grace=5)
        fake.kill()
        await fake.wait()

    results = {
        "machine": machine(load_before),
        "chunks": CHUNKS,
        "litellm_version": VERSION,
        "rows": rows,
        "memory": memory_soak,
        **summary(rows),
    }
    print(json.dumps({k: v for k, v in results.items() if k not in ("rows", "memory")}, indent=2))
    if quick:
        return
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with its figure and whether it was met."""
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    direct, grpc_row = by[("direct httpx", 1)], by[("gateway gRPC", 1)]
    ours, theirs = by[("agentmesh HTTP", 1)], by[("LiteLLM HTTP", 1)]
    added_ours = round(ours["ttft_p50_ms"] - direct["ttft_p50_ms"], 3)
    added_theirs = round(theirs["ttft_p50_ms"] - direct["ttft_p50_ms"], 3)
    cpu_ours = by[("agentmesh HTTP", 16)]["gateway_cpu_ms_per_stream"]
    cpu_theirs = by[("LiteLLM HTTP", 16)]["gateway_cpu_ms_per_stream"]
    hit = by[("agentmesh HTTP cache hit", 1)]["ttft_p50_ms"]
    throughput = {
        str(c): round(
            by[("agentmesh HTTP", c)]["streams_per_second"]
            / by[("LiteLLM HTTP", c)]["streams_per_second"],
            2,
        )
        for c in (16, 64)
    }
    return {
        "added_ttft_p50_ms_at_c1": round(grpc_row["ttft_p50_ms"] - direct["ttft_p50_ms"], 3),
        "added_ttft_p99_ms_at_c1": round(grpc_row["ttft_p99_ms"] - direct["ttft_p99_ms"], 3),
        "targets": {
            "cpu_per_stream_ms_c16": {
                "agentmesh": cpu_ours,
                "litellm": cpu_theirs,
                "ratio": round(cpu_theirs / cpu_ours, 1),
                "target": "agentmesh <= 1/20 of LiteLLM",
                "met": cpu_ours * 20 <= cpu_theirs,
            },
            "added_ttft_p50_ms_c1": {
                "agentmesh": added_ours,
                "litellm": added_theirs,
                "ratio": round(added_theirs / added_ours, 1) if added_ours > 0 else None,
                "target": "agentmesh <= 1/10 of LiteLLM and <= 1.5 ms",
                "met": added_ours * 10 <= added_theirs and added_ours <= 1.5,
            },
            "streams_per_second_ratio_agentmesh_over_litellm": throughput,
            "cache_hit_ttft_p50_ms": {"value": hit, "target": "<= 1 ms", "met": hit <= 1.0},
        },
    }


def write_markdown(results: dict[str, Any]) -> None:
    targets = results["targets"]
    cpu, ttft = targets["cpu_per_stream_ms_c16"], targets["added_ttft_p50_ms_c1"]
    hit = targets["cache_hit_ttft_p50_ms"]
    ratios = targets["streams_per_second_ratio_agentmesh_over_litellm"]

    def met(flag: bool) -> str:
        return "met" if flag else "**not met**"

    lines = [
        "# Gateway benchmark",
        "",
        f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['system']}), "
        f"Python {results['machine']['python']}; shared with other workloads while running "
        "(1-minute load average before/after: "
        f"{results['machine']['load_average_1m_before_after']}).",
        "The fake server, the gateway, the memory service, LiteLLM and this client share the"
        " same CPUs.",
        "",
        "Command: `uv run python bench/gateway/run.py`",
        "",
        f"Fake OpenAI-format server on loopback, {results['chunks']} content chunks per stream."
        f" LiteLLM proxy {results['litellm_version']} from PyPI (its own venv in `.work/`), one"
        " worker, no retries, master key, no database. agentmesh's HTTP API authenticates a"
        " tenant key (memory service) and records every call in the usage ledger.",
        "",
        "## Against the issue's targets",
        "",
        "| target | agentmesh | LiteLLM | ratio | result |",
        "|---|---|---|---|---|",
        f"| CPU per 64-chunk stream (c=16) ≤ 1/20 of LiteLLM's | {cpu['agentmesh']} ms |"
        f" {cpu['litellm']} ms | {cpu['ratio']}x less | {met(cpu['met'])} |",
        f"| added TTFT p50 over direct (c=1) ≤ 1/10 of LiteLLM's and ≤ 1.5 ms |"
        f" {ttft['agentmesh']} ms | {ttft['litellm']} ms | {ttft['ratio']}x less |"
        f" {met(ttft['met'])} |",
        f"| streams/s at c=16 and c=64 (reported) | | | {ratios['16']}x and {ratios['64']}x |"
        " reported |",
        f"| cache-hit TTFT p50 ≤ 1 ms | {hit['value']} ms | | | {met(hit['met'])} |",
        "",
        "## Every run",
        "",
        "| mode | conc. | streams | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms |"
        " streams/s | proxy CPU ms/stream | memory CPU ms/stream | client CPU ms/stream |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['streams']} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {r['total_p50_ms']} | {r['total_p99_ms']} | "
            f"{r['streams_per_second']} | {r.get('gateway_cpu_ms_per_stream', '-')} | "
            f"{r.get('memory_cpu_ms_per_stream', '-')} | {r['client_cpu_ms_per_stream']} |"
        )
    soak = results["memory"]
    lines += [
        "",
        "Proxy CPU is the gateway process (agentmesh) or the LiteLLM process and its worker;"
        " memory CPU is agentmesh's memory service answering the ledger records (and key checks,"
        " cached for 30 s). Client CPU is this process.",
        "",
        f"gRPC path: added time to first token at concurrency 1: p50"
        f" {results['added_ttft_p50_ms_at_c1']} ms, p99 {results['added_ttft_p99_ms_at_c1']} ms.",
        "",
        f"Memory over {soak['streams']} gRPC streams (gateway RSS, MB, sampled every tenth): "
        + ", ".join(f"{n}: {mb}" for n, mb in soak["rss_mb_samples"])
        + f" (growth after the first tenth: {soak['rss_growth_mb_after_first_tenth']} MB).",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    if "--fake-server" in sys.argv:
        asyncio.run(_serve_fake())
    elif "--markdown-only" in sys.argv:  # re-render RESULTS.md from results.json
        write_markdown(json.loads((HERE / "results.json").read_text()))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true")
        asyncio.run(main(parser.parse_args().quick))
