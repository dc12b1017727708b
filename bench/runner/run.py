"""Local runner benchmark: the gRPC service versus mlx-lm in-process, on the demo models.

    uv run python bench/runner/run.py [--sizes tiny small]

For each demo-model size (written by ``agentmesh_runner.demo_model`` into a temporary
directory) it measures, with greedy decoding and a fixed number of completion tokens:

* 1 stream: time to first token and decode tokens per second, in-process
  (``mlx_lm.stream_generate``) and through the service (a real runner process, gRPC stream);
* 8 streams: total completion tokens per second when run one after another and when run
  concurrently, in-process (one after another; ``BatchGenerator``) and through the service
  (batching on, the default, and ``MAX_BATCH=1``, i.e. taking turns);
* a follow-up conversation turn: prompt tokens processed with and without the prompt cache.

Writes ``bench/runner/results.json`` and ``bench/runner/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

import grpc
import mlx.core as mx
import mlx_lm
from mlx_lm.generate import BatchGenerator, stream_generate

from agentmesh.common.v1 import generation_pb2, messages_pb2
from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_client.mesh import RUNNER, ServiceProcess
from agentmesh_runner.demo_model import write_demo_model

HERE = Path(__file__).parent
TOKENS = {"tiny": 256, "small": 48}
REPEATS = {"tiny": 5, "small": 4}  # 1-stream figures are the median of this many runs
STREAMS = 8
SYSTEM = "You are one agent of a mesh of agents. Answer briefly."
CONTEXT = (
    "Notes so far: the orchestrator runs sessions, the gateway routes requests to providers, "
    "the memory service remembers facts and the local runner serves small models. "
) * 4


def prompt_text(i: int) -> str:
    return f"Question {i}: what does the local runner do with a full queue?"


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt_text(i)}]


@dataclass
class Stream:
    ttft: float
    tokens: int
    decode_tps: float
    seconds: float


# -- in-process ------------------------------------------------------------------------


class InProcess:
    """The same model loaded with mlx-lm in this process, driven by its public API."""

    def __init__(self, model_dir: Path) -> None:
        self.model, self.tokenizer = mlx_lm.load(str(model_dir))[:2]
        self.prompts = [
            self.tokenizer.apply_chat_template(messages(i), add_generation_prompt=True)
            for i in range(STREAMS)
        ]

    def one(self, i: int, tokens: int) -> Stream:
        start = time.perf_counter()
        first = last = start
        n = 0
        for _ in stream_generate(self.model, self.tokenizer, self.prompts[i], max_tokens=tokens):
            last = time.perf_counter()
            if n == 0:
                first = last
            n += 1
        return Stream(first - start, n, (n - 1) / max(last - first, 1e-9), last - start)

    def sequential_tps(self, tokens: int) -> float:
        start = time.perf_counter()
        produced = sum(self.one(i, tokens).tokens for i in range(STREAMS))
        return produced / (time.perf_counter() - start)

    def batch_tps(self, tokens: int) -> float:
        generator = BatchGenerator(
            self.model, completion_batch_size=STREAMS, prefill_batch_size=STREAMS
        )
        start = time.perf_counter()
        left = set(generator.insert(self.prompts, max_tokens=[tokens] * STREAMS))
        produced = 0
        while left:
            _, responses = generator.next()
            for response in responses:
                produced += 1
                if response.finish_reason:
                    left.discard(response.uid)
        seconds = time.perf_counter() - start
        generator.close()
        return produced / seconds


def _median(streams: list[Stream]) -> dict[str, float]:
    return {
        "ttft_ms": statistics.median(s.ttft for s in streams) * 1000,
        "decode_tps": statistics.median(s.decode_tps for s in streams),
        "end_to_end_tps": statistics.median(s.tokens / s.seconds for s in streams),
        "tokens": streams[0].tokens,
    }


# -- through the service ---------------------------------------------------------------


def request(i: int, tokens: int, **extra: Any) -> runner_pb2.GenerateRequest:
    system = messages_pb2.Message(role=messages_pb2.ROLE_SYSTEM, content=SYSTEM)
    user = messages_pb2.Message(role=messages_pb2.ROLE_USER, content=prompt_text(i))
    return runner_pb2.GenerateRequest(
        model=extra.pop("model", "bench"),
        messages=[system, user, *extra.pop("more", [])],
        config=generation_pb2.GenerationConfig(max_tokens=tokens, temperature=0.0),
        **extra,
    )


async def stream(
    stub: runner_pb2_grpc.LocalRunnerServiceStub, message: runner_pb2.GenerateRequest
) -> tuple[Stream, generation_pb2.Finished]:
    start = time.perf_counter()
    first = last = start
    deltas = 0
    finished = generation_pb2.Finished()
    async for response in stub.Generate(message, timeout=600):
        last = time.perf_counter()
        if response.event.HasField("delta"):
            if deltas == 0:
                first = last
            deltas += 1
        else:
            finished = response.event.finished
    n = finished.usage.completion_tokens
    return Stream(first - start, n, (n - 1) / max(last - first, 1e-9), last - start), finished


@contextlib.asynccontextmanager
async def runner_process(
    model_dir: Path, max_batch: int
) -> AsyncIterator[runner_pb2_grpc.LocalRunnerServiceStub]:
    env = {
        "AGENTMESH_RUNNER_PORT": "0",
        "AGENTMESH_RUNNER_METRICS_PORT": "",
        "AGENTMESH_RUNNER_MODELS_DIR": str(model_dir.parent),
        "AGENTMESH_RUNNER_CREATE_DEMO_MODEL": "false",
        "AGENTMESH_RUNNER_MAX_BATCH": str(max_batch),
        "AGENTMESH_RUNNER_LOG_LEVEL": "WARNING",
    }
    process = ServiceProcess(RUNNER, env)
    await process.start()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = runner_pb2_grpc.LocalRunnerServiceStub(channel)
            load = runner_pb2.LoadModelRequest(model=model_dir.name)
            await stub.LoadModel(load, timeout=120)
            await stream(stub, request(0, 8, model=model_dir.name))  # warm-up
            yield stub
    finally:
        await process.stop(grace=10)


async def sequential_tps(
    stub: runner_pb2_grpc.LocalRunnerServiceStub, name: str, tokens: int
) -> float:
    start = time.perf_counter()
    produced = 0
    for i in range(STREAMS):
        produced += (await stream(stub, request(i, tokens, model=name)))[0].tokens
    return produced / (time.perf_counter() - start)


async def concurrent(
    stub: runner_pb2_grpc.LocalRunnerServiceStub, name: str, tokens: int
) -> tuple[float, float]:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(stream(stub, request(i, tokens, model=name)) for i in range(STREAMS))
    )
    seconds = time.perf_counter() - start
    ttft = statistics.median(s.ttft for s, _ in results) * 1000
    return sum(s.tokens for s, _ in results) / seconds, ttft


async def measure(model_dir: Path, size: str) -> dict[str, Any]:
    tokens, repeats, name = TOKENS[size], REPEATS[size], model_dir.name
    local = InProcess(model_dir)
    local.one(0, 8)  # warm-up
    async with runner_process(model_dir, max_batch=STREAMS) as stub:
        # Alternate the two so that load from other jobs on the machine hits both alike.
        local_single, service_single = [], []
        for _ in range(repeats):
            local_single.append(local.one(0, tokens))
            service_single.append((await stream(stub, request(0, tokens, model=name)))[0])
        local_sequential = local.sequential_tps(tokens)
        service_sequential = await sequential_tps(stub, name, tokens)
        local_batch = local.batch_tps(tokens)
        service_concurrent, service_concurrent_ttft = await concurrent(stub, name, tokens)
        cache = await prompt_cache(stub, name, tokens)
    async with runner_process(model_dir, max_batch=1) as stub:
        turns_concurrent, turns_ttft = await concurrent(stub, name, tokens)
    return {
        "in_process": {
            "single": _median(local_single),
            "sequential_tps": local_sequential,
            "batch_tps": local_batch,
        },
        "service": {
            "single": _median(service_single),
            "sequential_tps": service_sequential,
            "concurrent_tps": service_concurrent,
            "concurrent_ttft_ms": service_concurrent_ttft,
            **cache,
        },
        "service_taking_turns": {
            "concurrent_tps": turns_concurrent,
            "concurrent_ttft_ms": turns_ttft,
        },
    }


async def prompt_cache(
    stub: runner_pb2_grpc.LocalRunnerServiceStub, name: str, tokens: int
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    # A conversation with a long context (the system prompt, several times over) and a short
    # first answer, as agents' turns usually are.
    context = [messages_pb2.Message(role=messages_pb2.ROLE_USER, content=CONTEXT)]
    for label, key in (("without_cache", ""), ("with_cache", "bench-conversation")):
        opening = request(100, 8, model=name, cache_key=key, more=context)
        _, first = await stream(stub, opening)
        follow_up = [
            messages_pb2.Message(role=messages_pb2.ROLE_ASSISTANT, content=first.text),
            messages_pb2.Message(role=messages_pb2.ROLE_USER, content="And when it is idle?"),
        ]
        timing, second = await stream(
            stub, request(100, 8, model=name, cache_key=key, more=context + follow_up)
        )
        usage = second.usage
        figures[f"follow_up_{label}"] = {
            "prompt_tokens": usage.prompt_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
            "processed_prompt_tokens": usage.prompt_tokens - usage.cached_prompt_tokens,
            "ttft_ms": timing.ttft * 1000,
        }
    return figures


# -- report ----------------------------------------------------------------------------


def matmul_gflops() -> float:
    """fp32 matrix-multiply speed of this device: what bounds prefill and batched decode."""
    a, b = mx.random.normal((512, 576)), mx.random.normal((576, 1536))
    mx.eval(a, b)
    start = time.perf_counter()
    for _ in range(10):
        mx.eval(a @ b)
    return 10 * 2 * 512 * 576 * 1536 / (time.perf_counter() - start) / 1e9


def parameters(model_dir: Path) -> int:
    weights = mx.load(str(model_dir / "model.safetensors"))
    return sum(int(w.size) for w in weights.values())


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "device": str(mx.default_device()),
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
            "python": sys.version.split()[0],
            "fp32_matmul_gflops": round(matmul_gflops(), 1),
        },
        "command": "uv run python bench/runner/run.py",
        "streams": STREAMS,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model_dir = write_demo_model(Path(tmp) / "bench", size)
            print(f"[{size}] measuring", flush=True)
            started = time.perf_counter()
            results["sizes"][size] = {
                "parameters": parameters(model_dir),
                "completion_tokens_per_stream": TOKENS[size],
                "single_stream_repeats": REPEATS[size],
                **(await measure(model_dir, size)),
            }
            print(f"[{size}] took {time.perf_counter() - started:.0f} s", flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "RESULTS.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Local runner benchmark",
        "",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs ({machine['processor']}), "
        f"MLX {machine['mlx']} on {machine['device']}, mlx-lm {machine['mlx_lm']}, "
        f"Python {machine['python']}; fp32 matmul {machine['fp32_matmul_gflops']} GFLOP/s. "
        "Shared with other jobs while it ran.",
        "",
        f"Command: `{results['command']}`. Greedy decoding; the demo models' text is "
        "meaningless by design, the work is real. 1-stream rows are medians of "
        "several runs, alternating in-process and service runs.",
        "",
        "| model | params | measure | in-process mlx-lm | service | service / in-process |",
        "|---|---|---|---|---|---|",
    ]
    for size, r in results["sizes"].items():
        local, svc, turns = r["in_process"], r["service"], r["service_taking_turns"]
        params = f"{r['parameters'] / 1e6:.2f}M"
        rows = [
            ("1 stream: decode tok/s", local["single"]["decode_tps"], svc["single"]["decode_tps"]),
            (
                "1 stream: time to first token (ms)",
                local["single"]["ttft_ms"],
                svc["single"]["ttft_ms"],
            ),
            (
                f"{STREAMS} streams one after another: tok/s",
                local["sequential_tps"],
                svc["sequential_tps"],
            ),
            (
                f"{STREAMS} concurrent streams, batched: tok/s",
                local["batch_tps"],
                svc["concurrent_tps"],
            ),
        ]
        for measure, a, b in rows:
            lines.append(f"| {size} | {params} | {measure} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
        lines.append(
            f"| {size} | {params} | {STREAMS} concurrent streams, taking turns (MAX_BATCH=1): "
            f"tok/s | - | {turns['concurrent_tps']:.1f} | - |"
        )
    lines += [
        "",
        "Targets: service >= 0.90 x in-process decode tok/s for 1 stream; "
        f"{STREAMS} concurrent streams >= 1.5 x the tok/s of running them one after another.",
        "",
        "| model | 1-stream service/in-process | concurrent / one-after-another (service) | "
        "batched / taking turns (service) |",
        "|---|---|---|---|",
    ]
    for size, r in results["sizes"].items():
        svc, local, turns = r["service"], r["in_process"], r["service_taking_turns"]
        lines.append(
            f"| {size} | {svc['single']['decode_tps'] / local['single']['decode_tps']:.2f} | "
            f"{svc['concurrent_tps'] / svc['sequential_tps']:.2f} | "
            f"{svc['concurrent_tps'] / turns['concurrent_tps']:.2f} |"
        )
    lines += [
        "",
        "Follow-up turn of one conversation (same messages plus the answer and a new question):",
        "",
        "| model | prompt cache | prompt tokens | cached | processed | time to first token (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for size, r in results["sizes"].items():
        for label in ("without_cache", "with_cache"):
            f = r["service"][f"follow_up_{label}"]
            lines.append(
                f"| {size} | {label.replace('_', ' ')} | {f['prompt_tokens']} | "
                f"{f['cached_prompt_tokens']} | {f['processed_prompt_tokens']} | "
                f"{f['ttft_ms']:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
