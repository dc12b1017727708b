"""Every bad input answers a precise status, never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest

from agentmesh.common.v1 import generation_pb2, messages_pb2
from agentmesh.runner.v1 import runner_pb2
from agentmesh_common import InvalidArgument, from_rpc_error

from .conftest import StartRunner


def generate_request(**fields: object) -> runner_pb2.GenerateRequest:
    message = runner_pb2.GenerateRequest(
        model="tiny",
        messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="hi")],
        config=generation_pb2.GenerationConfig(max_tokens=2),
    )
    for name, value in fields.items():
        if name == "messages":
            del message.messages[:]
        elif name == "config":
            assert isinstance(value, generation_pb2.GenerationConfig)
            message.config.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


async def generate_error(
    start_runner: StartRunner, message: runner_pb2.GenerateRequest
) -> grpc.aio.AioRpcError:
    runner = await start_runner()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in runner.stub.Generate(message, timeout=30):
            pass
    return caught.value


async def test_unknown_model_is_not_found(start_runner: StartRunner) -> None:
    error = await generate_error(start_runner, generate_request(model="no-such-model"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in (error.details() or "")


async def test_unknown_absolute_path_and_hub_name_are_not_found(start_runner: StartRunner) -> None:
    runner = await start_runner()
    for model in ("/nonexistent/model", "some-org/not-in-the-cache"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model=model), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, model


@pytest.mark.parametrize(
    ("files", "missing"),
    [
        ((), "config.json"),
        (("config.json",), "tokenizer.json"),
        (("config.json", "tokenizer.json"), "model.safetensors"),
    ],
)
async def test_directory_that_is_not_a_model_is_failed_precondition_naming_the_file(
    start_runner: StartRunner, files: tuple[str, ...], missing: str
) -> None:
    runner = await start_runner()
    broken = runner.models_dir / "broken"
    broken.mkdir()
    for name in files:
        (broken / name).write_text("{}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model="broken"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert missing in (caught.value.details() or "")


async def test_generation_config_out_of_range_is_invalid_argument_per_field(
    start_runner: StartRunner,
) -> None:
    config = generation_pb2.GenerationConfig(
        temperature=3.0, top_p=1.5, max_tokens=0, presence_penalty=-5, repetition_penalty=0
    )
    error = await generate_error(start_runner, generate_request(config=config))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_rpc_error(error)
    assert isinstance(typed, InvalidArgument)
    assert {v.field for v in typed.violations} == {
        "config.temperature",
        "config.top_p",
        "config.max_tokens",
        "config.presence_penalty",
        "config.repetition_penalty",
    }


async def test_empty_messages_are_invalid_argument(start_runner: StartRunner) -> None:
    error = await generate_error(start_runner, generate_request(messages=[]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_rpc_error(error)
    assert isinstance(typed, InvalidArgument)
    assert [v.field for v in typed.violations] == ["messages"]


async def test_unknown_backend_is_invalid_argument(start_runner: StartRunner) -> None:
    runner = await start_runner()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await runner.stub.LoadModel(
            runner_pb2.LoadModelRequest(model="tiny", backend="llama.cpp"), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "llama.cpp" in (caught.value.details() or "")
