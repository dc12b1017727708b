"""Composition root of the local runner: settings, resources and servicers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

from agentmesh.runner.v1 import runner_pb2_grpc
from agentmesh_common import Registration, Telemetry

from .backends.registry import default_registry
from .default_model import ensure_default_model
from .demo_model import DEMO_NOTICE, write_demo_model
from .runner import LocalRunner, RunnerConfig, RunnerMetrics
from .servicer import RunnerServicer
from .settings import RunnerSettings

SERVICE_NAME = "local-runner"
GRPC_SERVICE = "agentmesh.runner.v1.LocalRunnerService"
DEMO_MODEL_NAME = "tiny"

_logger = logging.getLogger("agentmesh.runner")


async def build(
    stack: AsyncExitStack, settings: RunnerSettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    demo = settings.models_dir / DEMO_MODEL_NAME
    if settings.create_demo_model and not demo.exists():
        await asyncio.to_thread(write_demo_model, demo, "tiny")
        _logger.info("wrote the tiny demo model", extra={"path": str(demo), "note": DEMO_NOTICE})
    if settings.import_default_model:
        imported = await asyncio.to_thread(ensure_default_model, settings.models_dir)
        _logger.info(
            "default model ready" if imported.reused else "imported the default model",
            extra={"path": str(imported.path), "seconds": round(imported.seconds, 2)},
        )
    registry = default_registry(
        max_batch=settings.max_batch, prompt_cache_entries=settings.prompt_cache_entries
    )
    default_backend = registry.resolve(settings.default_backend)
    runner = LocalRunner(
        RunnerConfig(
            models_dir=settings.models_dir,
            default_backend=default_backend,
            model_backends={
                model: registry.resolve(backend)
                for model, backend in settings.model_backends.items()
            },
            keep_alive_seconds=settings.keep_alive_seconds,
            memory_budget_bytes=settings.memory_budget_bytes,
            queue_capacity=settings.queue_capacity,
            reap_interval_seconds=settings.reap_interval_seconds,
            stream_interval_seconds=settings.stream_interval_seconds,
        ),
        registry,
        metrics=RunnerMetrics(telemetry.metrics),
        tracer=telemetry.tracer("agentmesh.runner"),
    )
    for backend in {default_backend, *map(registry.resolve, settings.model_backends.values())}:
        registry.check(backend)  # an unknown backend fails at start, not on first use
    await runner.start()
    stack.push_async_callback(runner.close)
    # The default backend's libraries are imported in a thread while the runner already
    # serves (the first status or load waits for it at most), not before it listens.
    warm_up = asyncio.create_task(asyncio.to_thread(registry.get_runner, default_backend))
    stack.push_async_callback(_finish, warm_up)
    servicer = RunnerServicer(runner)
    return [
        Registration(
            GRPC_SERVICE,
            partial(runner_pb2_grpc.add_LocalRunnerServiceServicer_to_server, servicer),
        )
    ]


async def _finish(task: asyncio.Task[object]) -> None:
    """Wait for a start-up task (its error, if any, shows again on first use)."""
    with contextlib.suppress(Exception):
        await task
