"""Gateway overhead benchmark: direct httpx streaming vs the same call through the gateway.

    uv run python bench/gateway/run.py            # full run, writes results.json + RESULTS.md
    uv run python bench/gateway/run.py --quick    # a smoke run (fewer streams)

A fast fake OpenAI-format server (raw asyncio, HTTP/1.1 keep-alive, chunked SSE) runs in its
own process and answers every request with 64 content chunks, a finish chunk, a usage chunk
and ``[DONE]``. The gateway runs as its own process (``python -m agentmesh_gateway``) with a
route to the fake. This process is the client: for each mode (direct httpx, gateway gRPC
``Generate``) and each concurrency (1, 16, 64) it measures time to first token and total time
per stream (p50, p99), streams per second, and CPU time of the gateway process per stream.
Finally it runs 10,000 streams through the gateway and samples the gateway's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import psutil

from agentmesh.common.v1 import messages_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_client.mesh import GATEWAY, ServiceProcess

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


async def direct_stream(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    body = {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say 64 tokens."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
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


async def scenario(
    name: str, run_one: Any, concurrency: int, streams: int, gateway: psutil.Process | None
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
    cpu_before = gateway.cpu_times() if gateway else None
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
    if gateway and cpu_before:
        after = gateway.cpu_times()
        used = (after.user - cpu_before.user) + (after.system - cpu_before.system)
        row["gateway_cpu_ms_per_stream"] = round(used / streams * 1000, 3)
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
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    routes = workdir / "routes.yaml"
    routes.write_text(
        f"routes:\n  bench:\n    - {{name: fake, provider: openai_compatible, model: bench-model,"
        f" base_url: '{base}', timeout: 30}}\n"
    )
    gateway = ServiceProcess(
        GATEWAY,
        {
            "AGENTMESH_GATEWAY_PORT": "0",
            "AGENTMESH_GATEWAY_METRICS_PORT": "0",
            "AGENTMESH_GATEWAY_ROUTES_FILE": str(routes),
            "AGENTMESH_GATEWAY_LOG_LEVEL": "WARNING",
        },
        log_path=workdir / "gateway.log",
    )
    await gateway.start()
    assert gateway.process is not None
    gw_proc = psutil.Process(gateway.process.pid)
    plan = {1: 200, 16: 1600, 64: 3200} if not quick else {1: 50, 16: 160, 64: 320}
    rows: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    try:
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        async with (
            httpx.AsyncClient(limits=limits, timeout=30) as client,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for concurrency, streams in plan.items():
                rows.append(
                    await scenario(
                        "direct httpx",
                        lambda: direct_stream(client, base + "/chat/completions"),
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
            memory = {
                "streams": total_streams,
                "rss_mb_samples": [[n, round(mb, 1)] for n, mb in samples],
                "rss_growth_mb_after_first_tenth": round(samples[-1][1] - samples[0][1], 1),
            }
            print(json.dumps(memory), flush=True)
    finally:
        await gateway.stop(grace=5)
        fake.kill()
        await fake.wait()

    one = {r["mode"]: r for r in rows if r["concurrency"] == 1}
    added = {
        "added_ttft_p50_ms_at_c1": round(
            one["gateway gRPC"]["ttft_p50_ms"] - one["direct httpx"]["ttft_p50_ms"], 3
        ),
        "added_ttft_p99_ms_at_c1": round(
            one["gateway gRPC"]["ttft_p99_ms"] - one["direct httpx"]["ttft_p99_ms"], 3
        ),
    }
    machine = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    if quick:
        print(json.dumps(added))
        return
    results = {"machine": machine, "chunks": CHUNKS, "rows": rows, "memory": memory, **added}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)


def write_markdown(results: dict[str, Any]) -> None:
    lines = [
        "# Gateway benchmark",
        "",
        f"Machine: {results['machine']['cpus']} CPUs ({results['machine']['system']}), "
        f"Python {results['machine']['python']}; shared with other workloads while running "
        "(1-minute load average before/after: "
        f"{results['machine']['load_average_1m_before_after']}).",
        "The fake server, the gateway and this client share the same 2 CPUs.",
        "",
        "Command: `uv run python bench/gateway/run.py`",
        "",
        f"Fake OpenAI-format server on loopback, {results['chunks']} content chunks per stream.",
        "",
        "| mode | conc. | streams | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms |"
        " streams/s | gateway CPU ms/stream | client CPU ms/stream |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['streams']} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {r['total_p50_ms']} | {r['total_p99_ms']} | "
            f"{r['streams_per_second']} | {r.get('gateway_cpu_ms_per_stream', '-')} | "
            f"{r['client_cpu_ms_per_stream']} |"
        )
    memory = results["memory"]
    lines += [
        "",
        "Client CPU is this process: for direct httpx it is the whole cost of a direct call"
        " (HTTP + SSE + JSON); through the gateway it is the gRPC client only.",
        "",
        f"Added time to first token at concurrency 1: p50 {results['added_ttft_p50_ms_at_c1']} ms,"
        f" p99 {results['added_ttft_p99_ms_at_c1']} ms.",
        "",
        f"Memory over {memory['streams']} streams (gateway RSS, MB, sampled every tenth): "
        + ", ".join(f"{n}: {mb}" for n, mb in memory["rss_mb_samples"])
        + f" (growth after the first tenth: {memory['rss_growth_mb_after_first_tenth']} MB).",
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
