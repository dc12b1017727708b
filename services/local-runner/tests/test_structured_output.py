"""``response_schema`` through the gRPC service: every answer parses and validates.

The tiny model has random weights, so what it "wants" to write is noise; at temperature 1
that is the harshest test of the constraint there is. Both backends, alone and in a batch.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import jsonschema
import pytest
from google.protobuf import json_format, struct_pb2

from agentmesh.common.v1 import generation_pb2
from agentmesh.runner.v1 import runner_pb2
from agentmesh_common import InvalidArgument, from_rpc_error

from .conftest import RunningRunner, StartRunner
from .test_constraints import ARRAY_OF_OBJECTS, ENUM, NESTED
from .test_generate import collect, request

SCHEMAS = {"nested": NESTED, "enum": ENUM, "array_of_objects": ARRAY_OF_OBJECTS}
BACKENDS = ("mlx", "cpu")


def constrained(
    schema: dict[str, Any], *, seed: int, max_tokens: int = 160
) -> runner_pb2.GenerateRequest:
    message = request(f"answer {seed}", max_tokens=max_tokens)
    message.config.temperature = 1.0
    message.config.seed = seed
    message.config.response_schema.CopyFrom(json_format.ParseDict(schema, struct_pb2.Struct()))
    return message


async def answer(runner: RunningRunner, message: runner_pb2.GenerateRequest) -> Any:
    deltas, finished = await collect(runner, message)
    assert finished.finish_reason == generation_pb2.FINISH_REASON_STOP, finished.text
    assert "".join(deltas) == finished.text
    return json.loads(finished.text)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_every_sampled_answer_matches_the_schema(
    start_runner: StartRunner, backend: str, name: str
) -> None:
    runner = await start_runner(default_backend=backend)
    for seed in range(4):
        value = await answer(runner, constrained(SCHEMAS[name], seed=seed))
        jsonschema.validate(value, SCHEMAS[name])


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_constrained_and_free_streams_each_keep_their_own_grammar(
    start_runner: StartRunner, backend: str
) -> None:
    """Constrained streams batched with each other and with a free one (mlx batches
    arrivals while a stream runs; cpu steps every running sequence together)."""
    runner = await start_runner(default_backend=backend)
    free = asyncio.create_task(collect(runner, request("free text", max_tokens=60)))
    names = sorted(SCHEMAS) * 2
    values = await asyncio.gather(
        *(answer(runner, constrained(SCHEMAS[n], seed=i)) for i, n in enumerate(names))
    )
    for name, value in zip(names, values, strict=True):
        jsonschema.validate(value, SCHEMAS[name])
    _, finished = await free
    assert finished.usage.completion_tokens == 60


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_answer_cut_by_max_tokens_says_length(
    start_runner: StartRunner, backend: str
) -> None:
    runner = await start_runner(default_backend=backend)
    _, finished = await collect(runner, constrained(NESTED, seed=0, max_tokens=3))
    assert finished.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert finished.usage.completion_tokens == 3
    assert finished.text.startswith('{"')  # the start of the value, never a complete one
    with pytest.raises(json.JSONDecodeError):
        json.loads(finished.text)


async def test_an_unusable_schema_is_invalid_argument_before_any_token(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner()
    message = constrained({"type": "object", "properties": {"a": {"type": "nonsense"}}}, seed=0)
    call = runner.stub.Generate(message, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()  # the first read fails: no event comes before the error
    typed = from_rpc_error(raised.value)
    assert isinstance(typed, InvalidArgument)
    assert [v.field for v in typed.violations] == ["config.response_schema"]
