"""The ``cpu`` backend (numpy forward pass) against the real mlx-lm code on the tiny model."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import apply_top_p, make_logits_processors
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from safetensors.numpy import load_file

from agentmesh.common.v1 import generation_pb2
from agentmesh_common import FailedPrecondition, MetricFactory
from agentmesh_runner.backends import BackendRegistry
from agentmesh_runner.backends.cpu import CpuBackend, LogitsConstraint, SamplingState, sample
from agentmesh_runner.backends.llama_numpy import (
    KVCache,
    LlamaConfig,
    QuantSpec,
    Segment,
    dequantize,
    load_llama,
)
from agentmesh_runner.backends.mlx import MlxBackend
from agentmesh_runner.domain import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    SamplingConfig,
    TextDelta,
)
from agentmesh_runner.runner import LocalRunner, RunnerConfig, RunnerMetrics

from .conftest import StartRunner
from .test_generate import collect, eventually, request

PROMPTS = ("hello there agent", "The quick brown fox", "tokens are counted exactly", "42")


def make_runner(models_dir: Path, registry: BackendRegistry) -> LocalRunner:
    return LocalRunner(
        RunnerConfig(models_dir=models_dir, default_backend="cpu", model_backends={"mlx": "mlx"}),
        registry,
        metrics=RunnerMetrics(MetricFactory(CollectorRegistry())),
        tracer=TracerProvider().get_tracer("test"),
    )


def registry_with(cpu: CpuBackend) -> BackendRegistry:
    registry = BackendRegistry()
    registry.register_runner("cpu", lambda: cpu)
    registry.register_runner("mlx", MlxBackend)
    return registry


@pytest.fixture
async def runner(tiny_model: Path, tmp_path: Path) -> AsyncIterator[LocalRunner]:
    """Model ``tiny`` on the cpu backend and ``mlx``, the same files, on the mlx one."""
    for name in ("tiny", "mlx"):
        (tmp_path / name).symlink_to(tiny_model)
    runner = make_runner(tmp_path, registry_with(CpuBackend(max_batch=8)))
    await runner.start()
    yield runner
    await runner.close()


def ask(
    text: str = "hello there agent", *, model: str = "tiny", cache_key: str = "", **config: Any
) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        messages=(ChatMessage("user", text),),
        config=SamplingConfig(**{"max_tokens": 16, **config}),
        cache_key=cache_key,
    )


async def run(runner: LocalRunner, request: GenerationRequest) -> tuple[str, GenerationFinished]:
    deltas: list[str] = []
    async for event in runner.generate(request):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, GenerationFinished)
            return "".join(deltas), event
    raise AssertionError("the stream ended without GenerationFinished")


# -- the forward pass ---------------------------------------------------------------------


def test_greedy_tokens_are_those_of_mlx(tiny_model: Path) -> None:
    model, tokenizer = mlx_load(str(tiny_model))[:2]
    config = LlamaConfig.parse(json.loads((tiny_model / "config.json").read_text()), "tiny")
    ours = load_llama(tiny_model, config)
    for text in PROMPTS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True
        )
        steps = generate_step(mx.array(prompt), model, max_tokens=40)
        expected = [int(token) for token, _ in steps]
        cache, feed, ours_tokens = KVCache(config), list(prompt), []
        for _ in range(40):
            token = int(np.argmax(ours.forward([Segment(cache, feed)])[0]))
            ours_tokens.append(token)
            feed = [token]
        assert ours_tokens == expected, text


def test_chunks_and_mixed_batches_compute_what_one_pass_does(tiny_model: Path) -> None:
    config = LlamaConfig.parse(json.loads((tiny_model / "config.json").read_text()), "tiny")
    model = load_llama(tiny_model, config)
    prompt = list(range(3, 300))
    whole = model.forward([Segment(KVCache(config), prompt)])[0]

    chunked, other = KVCache(config), KVCache(config)
    model.forward([Segment(chunked, prompt[:100], logits=False)])
    model.forward([Segment(other, prompt[:7])])
    # One pass with a prompt chunk beside a one-token step of another sequence.
    mixed = model.forward([Segment(chunked, prompt[100:]), Segment(other, prompt[7:8])])
    alone = model.forward([Segment(KVCache(config), prompt[:8])])[0]

    np.testing.assert_allclose(mixed[0], whole, atol=1e-5)
    np.testing.assert_allclose(mixed[1], alone, atol=1e-5)
    assert (chunked.length, other.length) == (len(prompt), 8)


def write_quantized_copy(source: Path, target: Path) -> None:
    """The tiny model with 4-bit layers, an 8-bit embedding and bfloat16 norms, packed by
    MLX itself, as ``mlx_lm.convert`` writes them."""
    shutil.copytree(source, target)
    weights = load_file(str(source / "model.safetensors"))
    packed: dict[str, mx.array] = {}
    for name, value in weights.items():
        module = name.removesuffix(".weight")
        if value.ndim == 2:
            bits = 8 if module == "model.embed_tokens" else 4
            q, scales, biases = mx.quantize(mx.array(value), group_size=32, bits=bits)
            packed |= {name: q, f"{module}.scales": scales, f"{module}.biases": biases}
        else:
            packed[name] = mx.array(value).astype(mx.bfloat16)
    (target / "model.safetensors").unlink()
    mx.save_safetensors(str(target / "model.safetensors"), packed, metadata={"format": "mlx"})
    config = json.loads((source / "config.json").read_text())
    config["quantization"] = {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    (target / "config.json").write_text(json.dumps(config))


def test_a_quantized_model_with_bfloat16_weights_computes_what_mlx_does(
    tiny_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "tiny-q4"
    write_quantized_copy(tiny_model, path)
    model, tokenizer = mlx_load(str(path))[:2]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True
    )
    expected = np.array(model(mx.array(prompt)[None]).astype(mx.float32))[0, -1]
    config = LlamaConfig.parse(json.loads((path / "config.json").read_text()), str(path))
    assert config.quant_for("model.embed_tokens") == QuantSpec(32, 8)
    logits = load_llama(path, config).forward([Segment(KVCache(config), prompt)])[0]
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (4, 64), (8, 32), (8, 64)])
def test_dequantize_matches_mlx(bits: int, group_size: int) -> None:
    weight = np.random.default_rng(bits * group_size).standard_normal((96, 256))
    packed, scales, biases = mx.quantize(
        mx.array(weight.astype(np.float32)), group_size=group_size, bits=bits
    )
    expected = np.array(mx.dequantize(packed, scales, biases, group_size=group_size, bits=bits))
    ours = dequantize(
        np.array(packed), np.array(scales), np.array(biases), QuantSpec(group_size, bits)
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_unsupported_rope_scaling_is_refused_by_name(tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "yarn"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FailedPrecondition, match="rope_scaling type 'yarn'"):
        CpuBackend().inspect(path)


# -- sampling -----------------------------------------------------------------------------


def test_penalties_match_mlx_lm_processors() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(64).astype(np.float32)
    history = [5, 9, 9, 9, 12, 40, 5, *range(20, 40)]  # repeats, and more than 20
    processors = make_logits_processors(
        repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25
    )
    expected = mx.array(logits)[None]
    for processor in processors:
        expected = processor(mx.array(history), expected)
    ours = logits.copy()
    state = SamplingState(
        temperature=0.0,
        rng=np.random.default_rng(0),
        history=history,
        repetition_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    assert sample(ours, state) == int(np.argmax(np.array(expected)[0]))
    np.testing.assert_allclose(ours, np.array(expected)[0], rtol=1e-6)


def test_top_p_draws_only_from_the_nucleus_mlx_lm_keeps() -> None:
    logits = np.random.default_rng(4).standard_normal(32).astype(np.float32) * 3
    logprobs = mx.array(logits) - mx.logsumexp(mx.array(logits))
    kept = set(np.flatnonzero(np.isfinite(np.array(apply_top_p(logprobs[None], 0.6))[0])))
    state = SamplingState(temperature=1.0, top_p=0.6, rng=np.random.default_rng(1), history=[])
    drawn = {sample(logits.copy(), state) for _ in range(300)}
    assert drawn == kept


# -- serving ------------------------------------------------------------------------------


async def test_greedy_text_and_usage_match_the_mlx_backend(runner: LocalRunner) -> None:
    long_prompt = " ".join(PROMPTS * 60)  # more than one step's prefill budget
    for text in (*PROMPTS[:2], long_prompt):
        streamed, ours = await run(runner, ask(text, max_tokens=24))
        _, theirs = await run(runner, ask(text, model="mlx", max_tokens=24))
        assert streamed == ours.text == theirs.text
        assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens
        assert ours.finish_reason == FinishReason.LENGTH
        assert ours.usage.completion_tokens == 24
    assert {m.model.name: m.model.backend for m in runner.status().models} == {
        "tiny": "cpu",
        "mlx": "mlx",
    }


async def test_a_stop_sequence_ends_the_answer_before_it(runner: LocalRunner) -> None:
    _, free = await run(runner, ask(max_tokens=30))
    stop = free.text[10:13]
    streamed, stopped = await run(runner, ask(max_tokens=30, stop=(stop,)))
    assert stopped.finish_reason == FinishReason.STOP
    assert streamed == stopped.text == free.text[: free.text.find(stop)]
    assert stopped.usage.completion_tokens < 30


async def test_cancelling_mid_stream_frees_the_model(runner: LocalRunner) -> None:
    stream = runner.generate(ask(max_tokens=1_000_000))
    for _ in range(3):
        assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()

    async def idle() -> bool:
        return runner.status().models[0].active_requests == 0

    await eventually(idle)
    _, finished = await run(runner, ask(max_tokens=4))
    assert finished.usage.completion_tokens == 4


async def test_concurrent_requests_batch_and_answer_as_they_would_alone(
    runner: LocalRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentmesh.runner.cpu")
    texts = [f"question number {i}" for i in range(6)]
    alone = [(await run(runner, ask(t, max_tokens=20)))[1].text for t in texts]
    assert not joins(caplog)
    together = await asyncio.gather(*(run(runner, ask(t, max_tokens=20)) for t in texts))
    assert joins(caplog)  # they did run in one batch
    assert [finished.text for _, finished in together] == alone
    assert all(streamed == finished.text for streamed, finished in together)


def joins(caplog: pytest.LogCaptureFixture) -> int:
    return [r.getMessage() for r in caplog.records].count("request joins a running batch")


async def test_a_request_joining_mid_stream_changes_no_answer(
    runner: LocalRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentmesh.runner.cpu")
    _, alone = await run(runner, ask("first caller", max_tokens=400))
    _, joiner_alone = await run(runner, ask("caller 1", max_tokens=10))

    first = runner.generate(ask("first caller", max_tokens=400))
    head = [await anext(first), await anext(first)]  # it is decoding now
    joiner = asyncio.create_task(run(runner, ask("caller 1", max_tokens=10)))
    rest = [event async for event in first]
    _, joined = await joiner

    assert joins(caplog) == 1
    finished = rest[-1]
    assert isinstance(finished, GenerationFinished)
    assert finished.text == alone.text
    assert "".join(e.text for e in head + rest[:-1] if isinstance(e, TextDelta)) == alone.text
    assert joined.text == joiner_alone.text


async def test_prompt_cache_reuses_a_conversation_and_any_shared_prefix(
    runner: LocalRunner, tiny_model: Path, tmp_path: Path
) -> None:
    _, first = await run(runner, ask("tell me about agents", cache_key="c1"))
    history = (ChatMessage("user", "tell me about agents"), ChatMessage("assistant", first.text))
    follow_up = GenerationRequest(
        model="tiny",
        messages=(*history, ChatMessage("user", "and the runner?")),
        config=SamplingConfig(max_tokens=16),
        cache_key="c1",
    )
    _, cached = await run(runner, follow_up)
    assert first.usage.cached_prompt_tokens == 0
    assert cached.usage.cached_prompt_tokens >= first.usage.prompt_tokens
    # Without a key, the longest prefix any recent sequence shares is reused too.
    _, unkeyed = await run(runner, ask("tell me about agents, please"))
    assert 0 < unkeyed.usage.cached_prompt_tokens < unkeyed.usage.prompt_tokens
    assert runner.status().models[0].prompt_cache_hits == 2

    # The reused KV is the right one: a runner without a prompt cache answers the same.
    (tmp_path / "cold").mkdir()
    (tmp_path / "cold" / "tiny").symlink_to(tiny_model)
    cold = make_runner(tmp_path / "cold", registry_with(CpuBackend(prompt_cache_entries=0)))
    await cold.start()
    try:
        _, uncached = await run(cold, follow_up)
        _, unkeyed_cold = await run(cold, ask("tell me about agents, please"))
    finally:
        await cold.close()
    assert uncached.usage.cached_prompt_tokens == 0
    assert (cached.text, unkeyed.text) == (uncached.text, unkeyed_cold.text)


async def test_a_seed_makes_sampling_reproducible_even_in_a_batch(runner: LocalRunner) -> None:
    def seeded(seed: int) -> GenerationRequest:
        return ask("sample me", max_tokens=30, temperature=1.0, seed=seed)

    _, greedy = await run(runner, ask("sample me", max_tokens=30))
    _, first = await run(runner, seeded(7))
    _, other = await run(runner, seeded(8))
    batch = await asyncio.gather(
        run(runner, seeded(7)), *(run(runner, ask(f"noise {i}", max_tokens=30)) for i in range(3))
    )
    assert batch[0][1].text == first.text
    assert first.text != other.text
    assert first.text != greedy.text


class FixedAnswer:
    """A constraint that allows only ``tokens``, in order; finished once all were sampled."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = list(tokens)
        self.seen: list[int] = []

    @property
    def finished(self) -> bool:
        return len(self.seen) == len(self.tokens)

    def mask(self, logits: np.ndarray[Any, Any]) -> None:
        allowed = self.tokens[len(self.seen)]
        keep = logits[allowed]
        logits[:] = -np.inf
        logits[allowed] = keep

    def advance(self, token: int) -> None:
        self.seen.append(token)


async def test_a_constraint_masks_every_token_and_ends_the_answer(
    tiny_model: Path, tmp_path: Path
) -> None:
    tokenizer = mlx_load(str(tiny_model))[1]
    answer = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    constraints: list[FixedAnswer] = []

    def constrain(request: GenerationRequest) -> LogitsConstraint | None:
        if request.config.temperature == 0:
            return None
        constraints.append(FixedAnswer(answer))
        return constraints[-1]

    (tmp_path / "tiny").symlink_to(tiny_model)
    runner = make_runner(tmp_path, registry_with(CpuBackend(constraints=constrain)))
    await runner.start()
    try:
        streamed, finished = await run(runner, ask(max_tokens=50, temperature=1.0, seed=1))
        _, free = await run(runner, ask(max_tokens=50))
    finally:
        await runner.close()
    assert streamed == finished.text == "The quick brown fox"
    assert finished.finish_reason == FinishReason.STOP
    assert finished.usage.completion_tokens == len(answer)
    assert constraints[0].seen == answer
    assert free.text != finished.text


async def test_the_grpc_service_serves_the_cpu_backend(start_runner: StartRunner) -> None:
    service = await start_runner(default_backend="cpu")
    deltas, finished = await collect(service, request(max_tokens=12))
    assert "".join(deltas) == finished.text
    assert finished.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert finished.usage.completion_tokens == 12
