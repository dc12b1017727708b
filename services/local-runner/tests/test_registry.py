"""The runner registry: a second backend plugs in behind the same interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from agentmesh_common import FailedPrecondition, InvalidArgument, MetricFactory, Unavailable
from agentmesh_runner.backends import BackendRegistry, Inbox
from agentmesh_runner.domain import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    GenerationTimings,
    ModelFacts,
    SamplingConfig,
    TextDelta,
    TokenUsage,
)
from agentmesh_runner.runner import LocalRunner, RunnerConfig, RunnerMetrics


class EchoModel:
    """Answers with the last message, one word per delta; a stand-in for a real engine."""

    prompt_cache_hits = 0

    def serve(self, inbox: Inbox) -> None:
        while (job := inbox.take()) is not None:
            words = job.request.messages[-1].content.split()
            for word in words:
                job.delta(word + " ")
            job.finish(
                GenerationFinished(
                    finish_reason=FinishReason.STOP,
                    usage=TokenUsage(prompt_tokens=len(words), completion_tokens=len(words)),
                    model=job.request.model,
                    text=" ".join(words) + " ",
                    timings=GenerationTimings(job.queue_wait, 0.0, 0.0),
                )
            )

    def close(self) -> None:
        pass


class EchoBackend:
    name = "echo"
    device = "cpu"

    def inspect(self, path: Path) -> ModelFacts:
        if not (path / "echo.txt").is_file():
            raise FailedPrecondition(f"{path} is not an echo model: echo.txt is missing")
        return ModelFacts(parameters=0, size_bytes=1, context_length=0)

    def load(self, path: Path) -> EchoModel:
        return EchoModel()


class BrokenModel(EchoModel):
    """Its owner thread dies on the first request, as a library bug would make it."""

    def serve(self, inbox: Inbox) -> None:
        inbox.take()
        raise RuntimeError("segfault averted")


class BrokenBackend(EchoBackend):
    name = "broken"

    def load(self, path: Path) -> EchoModel:
        return BrokenModel()


def make_runner(models_dir: Path, registry: BackendRegistry, **config: Any) -> LocalRunner:
    return LocalRunner(
        RunnerConfig(models_dir=models_dir, **{"default_backend": "echo", **config}),
        registry,
        metrics=RunnerMetrics(MetricFactory(CollectorRegistry())),
        tracer=TracerProvider().get_tracer("test"),
    )


async def test_a_registered_backend_serves_generations(tmp_path: Path) -> None:
    (tmp_path / "parrot").mkdir()
    (tmp_path / "parrot" / "echo.txt").write_text("")
    registry = BackendRegistry()
    registry.register_runner("echo", EchoBackend)
    runner = make_runner(tmp_path, registry)
    await runner.start()
    try:
        request = GenerationRequest(
            model="parrot",
            messages=(ChatMessage("user", "one two three"),),
            config=SamplingConfig(),
        )
        events = [event async for event in runner.generate(request)]
        # Deltas that pile up faster than the caller reads arrive merged, in order.
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two three "
        finished = events[-1]
        assert isinstance(finished, GenerationFinished)
        assert finished.usage.total_tokens == 6
        assert [m.model.backend for m in runner.status().models] == ["echo"]
    finally:
        await runner.close()


def echo_request(model: str) -> GenerationRequest:
    return GenerationRequest(model=model, messages=(ChatMessage("user", "hi"),))


async def test_backend_is_chosen_per_model_and_a_failing_owner_thread_fails_its_requests(
    tmp_path: Path,
) -> None:
    for name in ("parrot", "fragile"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "echo.txt").write_text("")
    registry = BackendRegistry()
    registry.register_runner("echo", EchoBackend)
    registry.register_runner("broken", BrokenBackend)
    runner = make_runner(tmp_path, registry, model_backends={"fragile": "broken"})
    await runner.start()
    try:
        with pytest.raises(Unavailable, match="fragile failed"):
            async for _ in runner.generate(echo_request("fragile")):
                pass
        assert [m.model.backend for m in runner.status().models] == ["broken"]
        assert await runner.unload_expired() == ["fragile"]
        events = [e async for e in runner.generate(echo_request("parrot"))]
        assert isinstance(events[-1], GenerationFinished)
        assert [m.model.backend for m in runner.status().models] == ["echo"]
    finally:
        await runner.close()


def test_get_runner_names_the_registered_backends() -> None:
    registry = BackendRegistry()
    registry.register_runner("echo", EchoBackend)
    assert registry.get_runner("echo") is registry.get_runner("echo")
    with pytest.raises(InvalidArgument, match="registered: echo"):
        registry.get_runner("vllm")
