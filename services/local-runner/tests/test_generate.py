"""Generation through the gRPC service with real mlx-lm on the generated tiny model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from mlx_lm.utils import load_tokenizer

from agentmesh.common.v1 import generation_pb2, messages_pb2
from agentmesh.runner.v1 import runner_pb2
from agentmesh_common import ResourceExhausted, from_rpc_error

from .conftest import RunningRunner, StartRunner

USER = messages_pb2.ROLE_USER
ASSISTANT = messages_pb2.ROLE_ASSISTANT


def request(
    text: str = "hello there agent",
    *,
    max_tokens: int = 16,
    stop: tuple[str, ...] = (),
    cache_key: str = "",
    history: tuple[messages_pb2.Message, ...] = (),
    model: str = "tiny",
    keep_alive: float | None = None,
) -> runner_pb2.GenerateRequest:
    message = runner_pb2.GenerateRequest(
        model=model,
        messages=[*history, messages_pb2.Message(role=USER, content=text)],
        config=generation_pb2.GenerationConfig(max_tokens=max_tokens, stop=list(stop)),
        cache_key=cache_key,
    )
    if keep_alive is not None:
        message.keep_alive.FromNanoseconds(int(keep_alive * 1e9))
    return message


async def collect(
    runner: RunningRunner, message: runner_pb2.GenerateRequest
) -> tuple[list[str], generation_pb2.Finished]:
    deltas: list[str] = []
    finished: generation_pb2.Finished | None = None
    async for response in runner.stub.Generate(message, timeout=60):
        kind = response.event.WhichOneof("event")
        assert finished is None, "nothing may follow `finished`"
        if kind == "delta":
            deltas.append(response.event.delta.text)
        else:
            assert kind == "finished"
            finished = response.event.finished
    assert finished is not None
    return deltas, finished


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``check`` until it holds (the runner changes state on its own threads)."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def status(runner: RunningRunner) -> runner_pb2.GetStatusResponse:
    return await runner.stub.GetStatus(runner_pb2.GetStatusRequest(), timeout=5)


async def drain(call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


def weights_size(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def prompt_length(model_dir: Path, *texts: str) -> int:
    tokenizer = load_tokenizer(model_dir)
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


async def test_streams_deltas_then_finished_with_exact_token_counts(
    start_runner: StartRunner, tiny_model: Path
) -> None:
    runner = await start_runner()
    deltas, finished = await collect(runner, request(max_tokens=12))

    assert len(deltas) > 1
    assert "".join(deltas) == finished.text
    assert finished.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert finished.usage.completion_tokens == 12
    assert finished.usage.prompt_tokens == prompt_length(tiny_model, "hello there agent")
    assert finished.usage.total_tokens == finished.usage.prompt_tokens + 12
    assert finished.usage.cached_prompt_tokens == 0
    assert (finished.provider, finished.model) == ("local", "tiny")


async def test_greedy_generation_is_repeatable_and_max_tokens_bounds_it(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner()
    _, long = await collect(runner, request(max_tokens=20))
    _, short = await collect(runner, request(max_tokens=5))
    assert short.usage.completion_tokens == 5
    assert long.text.startswith(short.text)
    assert len(short.text) < len(long.text)


async def test_stop_sequence_ends_the_answer_before_it(start_runner: StartRunner) -> None:
    runner = await start_runner()
    _, free = await collect(runner, request(max_tokens=30))
    stop = free.text[10:13]
    expected = free.text[: free.text.find(stop)]

    deltas, finished = await collect(runner, request(max_tokens=30, stop=(stop,)))

    assert finished.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert finished.text == expected
    assert "".join(deltas) == expected
    assert finished.usage.completion_tokens < 30


async def test_cancelling_mid_stream_stops_generation_and_frees_the_model(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner(max_batch=1)
    call = runner.stub.Generate(request(max_tokens=1_000_000))
    for _ in range(3):
        response = await call.read()
        assert response.event.WhichOneof("event") == "delta"
    call.cancel()

    async def idle() -> bool:
        return (await status(runner)).models[0].active_requests == 0

    await eventually(idle)
    # The owner thread is free again: a new request is served at once.
    _, finished = await collect(runner, request(max_tokens=4))
    assert finished.usage.completion_tokens == 4


async def test_deadline_exceeded_stops_generation(start_runner: StartRunner) -> None:
    runner = await start_runner(max_batch=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in runner.stub.Generate(request(max_tokens=1_000_000), timeout=0.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _, finished = await collect(runner, request(max_tokens=4))
    assert finished.usage.completion_tokens == 4


async def test_full_queue_answers_resource_exhausted_with_retry_info(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner(max_batch=1, queue_capacity=1)
    running = runner.stub.Generate(request(max_tokens=1_000_000))
    await running.read()
    waiting = runner.stub.Generate(request(max_tokens=2))

    async def queued() -> bool:
        return (await status(runner)).queue_depth == 1

    await eventually(queued)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(runner, request(max_tokens=2))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = from_rpc_error(caught.value)
    assert isinstance(error, ResourceExhausted)
    assert error.retry_after is not None
    assert error.retry_after > 0

    running.cancel()  # frees the model; the queued request then completes
    responses = [r async for r in waiting]
    assert responses[-1].event.finished.usage.completion_tokens == 2


async def test_eight_concurrent_streams_all_complete(start_runner: StartRunner) -> None:
    runner = await start_runner()
    results = await asyncio.gather(
        *(collect(runner, request(f"question number {i}", max_tokens=24)) for i in range(8))
    )
    for deltas, finished in results:
        assert finished.usage.completion_tokens == 24
        assert "".join(deltas) == finished.text
        assert finished.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    status = await runner.stub.GetStatus(runner_pb2.GetStatusRequest())
    assert status.models[0].recent_tokens_per_second > 0
    assert status.queue_depth == 0


async def test_follow_up_turn_reuses_the_prompt_cache(
    start_runner: StartRunner, tiny_model: Path
) -> None:
    runner = await start_runner()
    _, first = await collect(runner, request("tell me about agents", cache_key="c1"))
    assert first.usage.cached_prompt_tokens == 0
    history = (
        messages_pb2.Message(role=USER, content="tell me about agents"),
        messages_pb2.Message(role=ASSISTANT, content=first.text),
    )

    _, cached = await collect(runner, request("and the runner?", cache_key="c1", history=history))
    # Without a key the longest shared prefix of any earlier request is reused as well.
    _, unkeyed = await collect(runner, request("and the runner?", history=history))
    cold_runner = await start_runner(prompt_cache_entries=0)
    _, cold = await collect(cold_runner, request("and the runner?", history=history))

    expected = prompt_length(tiny_model, "tell me about agents", first.text, "and the runner?")
    assert cached.usage.prompt_tokens == unkeyed.usage.prompt_tokens == expected
    assert cached.text == unkeyed.text == cold.text  # the reused KV caches are the right ones
    assert cold.usage.cached_prompt_tokens == 0
    # The follow-up processes fewer prompt tokens: at least the whole first prompt is reused.
    assert cached.usage.cached_prompt_tokens >= prompt_length(tiny_model, "tell me about agents")
    assert unkeyed.usage.cached_prompt_tokens >= cached.usage.cached_prompt_tokens
    status = await runner.stub.GetStatus(runner_pb2.GetStatusRequest())
    assert status.models[0].prompt_cache_hits == 2


async def test_generation_records_metrics_and_spans(start_runner: StartRunner) -> None:
    runner = await start_runner()
    await collect(runner, request(max_tokens=6))
    registry = runner.telemetry.registry
    labels = {"model": "tiny"}
    assert registry.get_sample_value("agentmesh_runner_time_to_first_token_seconds_count", labels)
    assert registry.get_sample_value("agentmesh_runner_queue_wait_seconds_count", labels) == 1
    completion = {"model": "tiny", "kind": "completion"}
    assert registry.get_sample_value("agentmesh_runner_tokens_total", completion) == 6
    spans = {span.name: span for span in runner.spans.get_finished_spans()}
    assert {"runner.generate", "runner.prefill", "runner.decode"} <= set(spans)
    generate = spans["runner.generate"]
    assert generate.attributes is not None
    assert generate.attributes["completion_tokens"] == 6
    for name in ("runner.prefill", "runner.decode"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == generate.context.span_id
    assert spans["runner.prefill"].end_time == spans["runner.decode"].start_time


async def test_keep_alive_unloads_an_idle_model(start_runner: StartRunner) -> None:
    runner = await start_runner(reap_interval_seconds=0.05)
    await collect(runner, request(max_tokens=2, keep_alive=1.0))
    listed = await runner.stub.ListModels(runner_pb2.ListModelsRequest())
    assert [m.loaded for m in listed.models] == [True]
    started = time.monotonic()

    async def unloaded() -> bool:
        listed = await runner.stub.ListModels(runner_pb2.ListModelsRequest(), timeout=5)
        return not listed.models[0].loaded

    await eventually(unloaded)
    assert time.monotonic() - started >= 0.5


async def test_load_unload_list_and_status(start_runner: StartRunner) -> None:
    runner = await start_runner()
    listed = await runner.stub.ListModels(runner_pb2.ListModelsRequest())
    assert [(m.name, m.loaded, m.backend) for m in listed.models] == [("tiny", False, "mlx")]
    assert listed.models[0].parameters > 0
    assert listed.models[0].context_length == 2048

    keep = Duration(seconds=60)
    loaded = await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model="tiny", keep_alive=keep))
    assert loaded.model.loaded
    assert loaded.load_duration.ToNanoseconds() > 0
    again = await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model="tiny"))
    assert again.load_duration.ToNanoseconds() == 0

    status = await runner.stub.GetStatus(runner_pb2.GetStatusRequest())
    assert [m.model.name for m in status.models] == ["tiny"]
    assert status.memory_in_use_bytes == listed.models[0].size_bytes
    assert status.default_backend == "mlx"
    assert status.device in ("cpu", "gpu")

    unloaded = await runner.stub.UnloadModel(runner_pb2.UnloadModelRequest(model="tiny"))
    assert unloaded.was_loaded
    unloaded = await runner.stub.UnloadModel(runner_pb2.UnloadModelRequest(model="tiny"))
    assert not unloaded.was_loaded
    status = await runner.stub.GetStatus(runner_pb2.GetStatusRequest())
    assert list(status.models) == []
    assert status.memory_in_use_bytes == 0


async def test_memory_budget_unloads_the_least_recently_used_model(
    start_runner: StartRunner, tiny_model: Path
) -> None:
    runner = await start_runner(memory_budget_bytes=int(weights_size(tiny_model) * 2.5))
    for name in ("tiny-b", "tiny-c"):
        (runner.models_dir / name).symlink_to(runner.models_dir / "tiny")
    for name in ("tiny", "tiny-b"):
        await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model=name))
    await collect(runner, request(max_tokens=1, model="tiny"))  # tiny-b is now the LRU

    await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model="tiny-c"))

    status = await runner.stub.GetStatus(runner_pb2.GetStatusRequest())
    assert [m.model.name for m in status.models] == ["tiny", "tiny-c"]
    assert status.memory_in_use_bytes <= status.memory_budget_bytes


async def test_a_stream_joined_mid_way_continues_exactly_in_the_batch(
    start_runner: StartRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentmesh.runner.mlx")
    runner = await start_runner()
    _, alone = await collect(runner, request("first caller", max_tokens=400))

    first = runner.stub.Generate(request("first caller", max_tokens=400))
    await first.read()
    await first.read()
    joined = await asyncio.gather(
        *(collect(runner, request(f"caller {i}", max_tokens=10)) for i in range(3))
    )
    responses = []
    while (response := await first.read()) is not grpc.aio.EOF:
        responses.append(response)

    joins = [r for r in caplog.records if r.getMessage() == "stream joins a batch"]
    assert len(joins) == 1
    assert 0 < joins[0].generated < 400
    finished = responses[-1].event.finished
    assert finished.usage.completion_tokens == 400
    assert finished.text == alone.text
    assert all(f.usage.completion_tokens == 10 for _, f in joined)


async def test_prompt_cache_is_reused_by_batched_conversations(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner()
    firsts = await asyncio.gather(
        *(collect(runner, request(f"topic {i}", cache_key=f"k{i}")) for i in range(3))
    )
    follow_ups = await asyncio.gather(
        *(
            collect(
                runner,
                request(
                    "go on",
                    cache_key=f"k{i}",
                    history=(
                        messages_pb2.Message(role=USER, content=f"topic {i}"),
                        messages_pb2.Message(role=ASSISTANT, content=finished.text),
                    ),
                ),
            )
            for i, (_, finished) in enumerate(firsts)
        )
    )
    for (_, first), (_, follow_up) in zip(firsts, follow_ups, strict=True):
        assert follow_up.usage.cached_prompt_tokens >= first.usage.prompt_tokens
    # The reused caches hold the right conversation: the same answers as without a cache.
    _, alone = await collect(
        runner,
        request(
            "go on",
            history=(
                messages_pb2.Message(role=USER, content="topic 0"),
                messages_pb2.Message(role=ASSISTANT, content=firsts[0][1].text),
            ),
        ),
    )
    assert follow_ups[0][1].text == alone.text


async def test_unloading_fails_running_and_queued_requests_with_unavailable(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner(max_batch=1)
    running = runner.stub.Generate(request(max_tokens=1_000_000))
    await running.read()
    queued = runner.stub.Generate(request(max_tokens=2))

    async def waiting() -> bool:
        return (await status(runner)).queue_depth == 1

    await eventually(waiting)
    unloaded = await runner.stub.UnloadModel(runner_pb2.UnloadModelRequest(model="tiny"))
    assert unloaded.was_loaded

    for call in (running, queued):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await drain(call)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert list((await status(runner)).models) == []


async def test_list_models_pages_through_the_models_directory(start_runner: StartRunner) -> None:
    runner = await start_runner()
    for name in ("tiny-b", "tiny-c"):
        (runner.models_dir / name).symlink_to(runner.models_dir / "tiny")
    (runner.models_dir / "not-a-model").mkdir()

    names: list[str] = []
    token = ""
    for _ in range(5):
        page = await runner.stub.ListModels(
            runner_pb2.ListModelsRequest(page_size=2, page_token=token), timeout=10
        )
        names += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert names == ["tiny", "tiny-b", "tiny-c"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.ListModels(runner_pb2.ListModelsRequest(page_token="x"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sampling_settings_reach_mlx_lm(start_runner: StartRunner) -> None:
    runner = await start_runner()

    def sampled(**config: float) -> runner_pb2.GenerateRequest:
        message = request("sample me", max_tokens=40)
        for name, value in config.items():
            setattr(message.config, name, value)
        return message

    _, greedy = await collect(runner, sampled())
    _, seeded = await collect(runner, sampled(temperature=1.0, seed=7))
    _, seeded_again = await collect(runner, sampled(temperature=1.0, seed=7))
    _, other_seed = await collect(runner, sampled(temperature=1.0, seed=8))
    _, penalized = await collect(runner, sampled(repetition_penalty=2.0))

    assert seeded.text == seeded_again.text  # a seed makes sampling reproducible
    assert seeded.text != other_seed.text
    assert seeded.text != greedy.text  # temperature 1 samples, 0 is greedy
    assert penalized.text != greedy.text  # the repetition penalty changes greedy choices


async def test_a_model_directory_path_serves_like_a_name(
    start_runner: StartRunner, tiny_model: Path
) -> None:
    runner = await start_runner()
    _, finished = await collect(runner, request(max_tokens=3, model=str(tiny_model)))
    assert finished.usage.completion_tokens == 3
    assert finished.model == str(tiny_model)
    listed = await runner.stub.ListModels(runner_pb2.ListModelsRequest(), timeout=10)
    assert [(m.name, m.loaded) for m in listed.models] == [(str(tiny_model), True), ("tiny", False)]
