"""The local runner's logic: which models exist, which are loaded, and generation through them.

Models load on first use on their own owner thread (:class:`ModelWorker`). A memory budget
bounds the bytes of loaded weights (the least recently used idle model is unloaded first), and
a reaper unloads models idle past their keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry import trace

from agentmesh_common import (
    AgentmeshError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MetricFactory,
    NotFound,
    ResourceExhausted,
)

from .backends.base import Backend, JobFailed
from .backends.registry import BackendRegistry
from .domain import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    LoadedModelStatus,
    LoadResult,
    ModelInfo,
    RunnerStatus,
    TextDelta,
)
from .gguf_import import ensure_imported, model_name_for
from .worker import ModelWorker

__all__ = ["LocalRunner", "RunnerConfig", "RunnerMetrics"]

_logger = logging.getLogger("agentmesh.runner")


@dataclass(frozen=True)
class RunnerConfig:
    """What the runner needs from the settings."""

    models_dir: Path
    default_backend: str = "mlx"
    keep_alive_seconds: float = 300.0
    memory_budget_bytes: int = 8 * 1024**3
    queue_capacity: int = 16
    reap_interval_seconds: float = 1.0
    retry_after_seconds: float = 1.0
    stream_interval_seconds: float = 0.0
    model_backends: Mapping[str, str] = field(default_factory=dict)


class RunnerMetrics:
    """Domain metrics: time to first token, throughput, queue wait, prompt-cache hits."""

    def __init__(self, factory: MetricFactory) -> None:
        self.time_to_first_token = factory.histogram(
            "runner_time_to_first_token_seconds",
            "From request arrival to the first generated token (queue wait + prefill).",
            ["model"],
        )
        self.queue_wait = factory.histogram(
            "runner_queue_wait_seconds", "Time a request waited for its model.", ["model"]
        )
        self.tokens_per_second = factory.histogram(
            "runner_decode_tokens_per_second",
            "Completion tokens per second of decoding, per generation.",
            ["model"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
        )
        self.tokens = factory.counter(
            "runner_tokens_total", "Tokens processed, by kind.", ["model", "kind"]
        )
        self.prompt_cache_hits = factory.counter(
            "runner_prompt_cache_hits_total",
            "Generations that reused a cached prompt prefix.",
            ["model"],
        )
        self.queue_depth = factory.gauge(
            "runner_queue_depth", "Requests waiting for a model.", ["model"]
        )


class LocalRunner:
    """Serves generations from local models; all methods run on the event loop."""

    def __init__(
        self,
        config: RunnerConfig,
        registry: BackendRegistry,
        *,
        metrics: RunnerMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self.config = config
        self.registry = registry
        self._metrics = metrics
        self._tracer = tracer
        self._workers: dict[str, ModelWorker] = {}
        self._lock = asyncio.Lock()
        self._import_lock = asyncio.Lock()  # two requests for one new GGUF import it once
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="runner-keep-alive")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        async with self._lock:
            for name in list(self._workers):
                await self._workers.pop(name).stop()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval_seconds)
            await self.unload_expired()

    async def unload_expired(self) -> list[str]:
        """Unload every idle model whose keep-alive has passed; returns their names."""

        def expired(worker: ModelWorker) -> bool:
            return worker.crashed or (not worker.busy and worker.expires_at <= time.time())

        unloaded: list[str] = []
        async with self._lock:
            for name in [name for name, worker in self._workers.items() if expired(worker)]:
                worker = self._workers[name]
                if expired(worker):  # still, now that the lock is held
                    del self._workers[name]
                    await worker.stop()
                    unloaded.append(name)
                    _logger.info("model unloaded after keep-alive", extra={"model": name})
        return unloaded

    # -- models -------------------------------------------------------------------------

    async def _resolve(self, model: str) -> Path:
        if not model:
            raise InvalidArgument(
                "model is required", violations=[FieldViolation("model", "must not be empty")]
            )
        if model in self._workers:
            return self._workers[model].path
        if model.endswith(".gguf"):
            return await self._imported(model)
        local = await asyncio.to_thread(self._local_path, model)
        if local is not None:
            return local
        if Path(model).is_absolute():
            raise NotFound(f"model directory {model} does not exist", reason="MODEL_NOT_FOUND")
        if "/" in model:
            cached = await asyncio.to_thread(_hugging_face_cache_path, model)
            if cached is not None:
                return cached
        raise NotFound(
            f"unknown model {model!r}: not in {self.config.models_dir} nor the local "
            "Hugging Face cache",
            reason="MODEL_NOT_FOUND",
            metadata={"model": model},
        )

    async def _imported(self, model: str) -> Path:
        """A GGUF file given as the model: imported once into models_dir, then served."""
        source = Path(model)
        if not source.is_absolute():
            if ".." in source.parts:
                raise NotFound(f"GGUF file {model} does not exist", reason="MODEL_NOT_FOUND")
            source = self.config.models_dir / source
        async with self._import_lock:
            result = await asyncio.to_thread(
                ensure_imported, source, self.config.models_dir, model_name_for(source)
            )
        if not result.reused:
            _logger.info(
                "imported a GGUF file",
                extra={"model": model, "path": str(result.path), "seconds": result.seconds},
            )
        return result.path

    def _local_path(self, model: str) -> Path | None:
        candidate = Path(model)
        if candidate.is_absolute():
            return candidate if candidate.is_dir() else None
        if ".." not in candidate.parts and (self.config.models_dir / candidate).is_dir():
            return self.config.models_dir / candidate
        return None

    def _backend(self, name: str) -> Backend:
        return self.registry.get_runner(name or self.config.default_backend)

    async def load(
        self, model: str, *, keep_alive_seconds: float | None = None, backend: str = ""
    ) -> LoadResult:
        """Load ``model`` now (no-op if loaded), making room within the memory budget."""
        worker = self._workers.get(model)
        if worker is not None:
            worker.touch(keep_alive_seconds)
            return LoadResult(self._info(worker), 0.0)
        path = await self._resolve(model)
        async with self._lock:
            worker = self._workers.get(model)
            if worker is not None:
                worker.touch(keep_alive_seconds)
                return LoadResult(self._info(worker), 0.0)
            # The first use of a backend imports its libraries (seconds): off the event loop.
            chosen = await asyncio.to_thread(
                self._backend, backend or self.config.model_backends.get(model, "")
            )
            facts = await asyncio.to_thread(chosen.inspect, path)
            await self._make_room(facts.size_bytes)
            worker = ModelWorker(
                name=model,
                path=path,
                backend=chosen,
                facts=facts,
                queue_capacity=self.config.queue_capacity,
                keep_alive_seconds=(
                    self.config.keep_alive_seconds
                    if keep_alive_seconds is None
                    else keep_alive_seconds
                ),
                retry_after_seconds=self.config.retry_after_seconds,
                stream_interval_seconds=self.config.stream_interval_seconds,
            )
            seconds = await worker.start()
            self._workers[model] = worker
            _logger.info("model loaded", extra={"model": model, "load_seconds": seconds})
            return LoadResult(self._info(worker), seconds)

    async def _make_room(self, size_bytes: int) -> None:
        budget = self.config.memory_budget_bytes
        if size_bytes > budget:
            raise FailedPrecondition(
                f"the model needs {size_bytes} bytes, more than the memory budget of {budget}",
                reason="MODEL_EXCEEDS_MEMORY_BUDGET",
            )
        while self._memory_in_use() + size_bytes > budget:
            idle = [w for w in self._workers.values() if not w.busy]
            if not idle:
                raise ResourceExhausted(
                    "the memory budget is taken by models that are busy",
                    retry_after=self.config.retry_after_seconds,
                    reason="MEMORY_BUDGET_EXHAUSTED",
                )
            victim = min(idle, key=lambda w: w.last_used)
            _logger.info("model unloaded for memory", extra={"model": victim.name})
            await self._workers.pop(victim.name).stop()

    async def unload(self, model: str) -> bool:
        """Unload ``model``; queued and running requests fail with UNAVAILABLE."""
        async with self._lock:
            worker = self._workers.pop(model, None)
            if worker is None:
                return False
            await worker.stop()
            return True

    def _memory_in_use(self) -> int:
        return sum(w.facts.size_bytes for w in self._workers.values())

    def _info(self, worker: ModelWorker) -> ModelInfo:
        return ModelInfo(
            name=worker.name,
            path=str(worker.path),
            backend=worker.backend.name,
            loaded=True,
            facts=worker.facts,
            last_used=worker.last_used,
            expires_at=worker.expires_at,
        )

    async def list_models(self) -> list[ModelInfo]:
        """Models in the models directory plus loaded ones from elsewhere, by name."""
        infos = {name: self._info(worker) for name, worker in self._workers.items()}
        backend = await asyncio.to_thread(self._backend, "")
        for entry in await asyncio.to_thread(self._model_directories):
            if entry.name in infos:
                continue
            try:
                facts = await asyncio.to_thread(backend.inspect, entry)
            except FailedPrecondition:
                continue  # not a model (yet): nothing a client could load
            infos[entry.name] = ModelInfo(
                name=entry.name, path=str(entry), backend=backend.name, loaded=False, facts=facts
            )
        return [infos[name] for name in sorted(infos)]

    def _model_directories(self) -> list[Path]:
        directory = self.config.models_dir
        if not directory.is_dir():
            return []
        return sorted(e for e in directory.iterdir() if (e / "config.json").is_file())

    def status(self) -> RunnerStatus:
        models = tuple(
            LoadedModelStatus(
                model=self._info(worker),
                queue_depth=worker.queue_depth,
                active_requests=worker.running,
                recent_tokens_per_second=worker.recent_tokens_per_second,
                prompt_cache_hits=worker.prompt_cache_hits,
            )
            for _, worker in sorted(self._workers.items())
        )
        rates = [m.recent_tokens_per_second for m in models]
        backend = self._backend("")
        return RunnerStatus(
            models=models,
            memory_in_use_bytes=self._memory_in_use(),
            memory_budget_bytes=self.config.memory_budget_bytes,
            queue_depth=sum(m.queue_depth for m in models),
            recent_tokens_per_second=sum(rates),
            default_backend=backend.name,
            device=backend.device,
        )

    # -- generation ---------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream text deltas, then one GenerationFinished. Stopping the iteration (the
        caller cancelled or its deadline passed) stops the model at its next decode step."""
        await self.load(request.model, keep_alive_seconds=request.keep_alive_seconds)
        worker = self._workers.get(request.model)
        if worker is None:  # unloaded between load and submit
            raise NotFound(f"model {request.model} was unloaded", reason="MODEL_NOT_FOUND")
        # Not the *current* span: an async generator's context must not stay attached across
        # its yields. Children name it as their parent explicitly.
        span = self._tracer.start_span(
            "runner.generate",
            attributes={"model": request.model, "request_id": request.request_id},
        )
        try:
            job = worker.submit(request)
            self._metrics.queue_depth.labels(request.model).set(worker.queue_depth)
            pending: deque[GenerationEvent | JobFailed] = deque()
            try:
                while True:
                    if not pending:
                        pending.append(await job.events.get())
                        while not job.events.empty():
                            pending.append(job.events.get_nowait())
                    event = pending.popleft()
                    if isinstance(event, TextDelta) and pending:
                        # The caller fell behind: send what piled up as one delta.
                        texts = [event.text]
                        while pending and isinstance(pending[0], TextDelta):
                            texts.append(pending.popleft().text)  # type: ignore[union-attr]
                        event = TextDelta("".join(texts))
                    if isinstance(event, JobFailed):
                        raise event.error
                    if isinstance(event, GenerationFinished):
                        worker.record(event)
                        self._observe(span, event)
                    yield event
                    if isinstance(event, GenerationFinished):
                        return
            finally:
                worker.release(job)
                self._metrics.queue_depth.labels(request.model).set(worker.queue_depth)
        except AgentmeshError as exc:
            span.set_status(trace.StatusCode.ERROR, exc.reason)
            raise
        finally:
            span.end()

    def _observe(self, span: trace.Span, finished: GenerationFinished) -> None:
        model, usage, timings = finished.model, finished.usage, finished.timings
        self._metrics.queue_wait.labels(model).observe(timings.queue_wait)
        self._metrics.time_to_first_token.labels(model).observe(
            timings.queue_wait + timings.prefill
        )
        if timings.decode > 0 and usage.completion_tokens > 1:
            rate = (usage.completion_tokens - 1) / timings.decode
            self._metrics.tokens_per_second.labels(model).observe(rate)
        self._metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(model, "cached_prompt").inc(usage.cached_prompt_tokens)
        self._metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
        if usage.cached_prompt_tokens:
            self._metrics.prompt_cache_hits.labels(model).inc()
        # Prefill and decode as child spans placed at their real times.
        end_ns = time.time_ns()
        decode_start = end_ns - int(timings.decode * 1e9)
        prefill_start = decode_start - int(timings.prefill * 1e9)
        for name, start, end in (
            ("runner.prefill", prefill_start, decode_start),
            ("runner.decode", decode_start, end_ns),
        ):
            child = self._tracer.start_span(
                name, context=trace.set_span_in_context(span), start_time=start
            )
            child.end(end_time=end)
        span.set_attributes(
            {
                "prompt_tokens": usage.prompt_tokens,
                "cached_prompt_tokens": usage.cached_prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "queue_wait_seconds": timings.queue_wait,
                "prefill_seconds": timings.prefill,
                "decode_seconds": timings.decode,
                "finish_reason": finished.finish_reason.value,
            }
        )


def _hugging_face_cache_path(repo_id: str) -> Path | None:
    """The local snapshot of ``repo_id`` in the Hugging Face cache; never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id
        return None
