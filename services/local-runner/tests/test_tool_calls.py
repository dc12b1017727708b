"""Tool calls through the service, for a chat template with the ``<tool_call>`` convention.

The tiny model (random weights) gets a Hermes-style template. Whatever it samples, the
answer is plain text or one call of an offered tool with arguments matching its schema; a
call is reported as a tool-call delta with finish reason TOOL_CALLS, never as text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import jsonschema
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import json_format, struct_pb2
from mlx_lm.tokenizer_utils import load as load_tokenizer

from agentmesh.common.v1 import generation_pb2, tools_pb2
from agentmesh.runner.v1 import runner_pb2
from agentmesh_common import InvalidArgument, from_rpc_error
from agentmesh_runner.backends.cpu import CpuBackend, LogitsConstraint
from agentmesh_runner.constraints import ConstraintCompiler
from agentmesh_runner.domain import GenerationRequest, ToolDefinition
from agentmesh_runner.servicer import RunnerServicer
from agentmesh_runner.tool_calls import parse_tool_call, supports_tool_calls

from .conftest import StartRunner
from .test_cpu_backend import make_runner, registry_with
from .test_generate import request

HERMES_TEMPLATE = (
    "{% if tools %}<|system|>You may call these tools:\n{% for tool in tools %}"
    "{{ tool | tojson }}\n{% endfor %}Answer a call as <tool_call>\n"
    '{"name": ..., "arguments": ...}\n</tool_call>\n{% endif %}'
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WEATHER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["city", "days"],
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
}


@pytest.fixture(scope="module")
def hermes_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("hermes") / "hermes"
    shutil.copytree(tiny_model, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = HERMES_TEMPLATE
    config_path.write_text(json.dumps(config))
    return model


def test_only_templates_with_the_convention_get_tool_call_constraints(
    hermes_model: Path, tiny_model: Path
) -> None:
    assert supports_tool_calls(HERMES_TEMPLATE)
    assert not supports_tool_calls(load_tokenizer(tiny_model)._tokenizer.chat_template)


def test_a_started_call_always_finishes_with_valid_arguments(hermes_model: Path) -> None:
    """Random logits, except that the first token opens a call: the rest must be a valid
    call of the one tool, whatever is sampled."""
    tokenizer = load_tokenizer(hermes_model)
    vocab = len(tokenizer._tokenizer)
    compiler = ConstraintCompiler(tokenizer._tokenizer, vocab, tokenizer.eos_token_ids)
    tool = ToolDefinition("weather", "The forecast", json.dumps(WEATHER))
    ask = GenerationRequest(model="hermes", messages=(), tools=(tool,))
    rng = np.random.default_rng(7)
    opener = tokenizer.encode("<", add_special_tokens=False)[0]
    for _ in range(5):
        constraint = compiler.for_request(ask)
        assert constraint is not None
        tokens: list[int] = []
        while not constraint.finished and len(tokens) < 400:
            logits = rng.normal(size=vocab).astype(np.float32) * 3
            if not tokens:
                logits[opener] = 100.0
            constraint.mask(logits)
            token = int(np.argmax(logits))
            constraint.advance(token)
            tokens.append(token)
        call = parse_tool_call(tokenizer.decode(tokens))
        assert call is not None, tokenizer.decode(tokens)
        assert call.name == "weather"
        jsonschema.validate(json.loads(call.arguments_json), WEATHER)


def weather_request(seed: int) -> runner_pb2.GenerateRequest:
    message = request(f"weather {seed}", model="hermes", max_tokens=120)
    message.config.temperature = 1.0
    message.config.seed = seed
    schema = json_format.ParseDict(WEATHER, struct_pb2.Struct())
    message.tools.append(
        tools_pb2.ToolSpec(name="weather", description="The forecast", parameters_schema=schema)
    )
    return message


class OpensACall:
    """The real tool-call constraint, with the first token pushed to open a call (a random
    model almost never starts one by itself)."""

    def __init__(self, inner: LogitsConstraint, opener: int) -> None:
        self.inner, self.opener, self.first = inner, opener, True

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def mask(self, logits: npt.NDArray[np.float32]) -> None:
        if self.first:
            logits[self.opener] = 1e9
            self.first = False
        self.inner.mask(logits)

    def advance(self, token: int) -> None:
        self.inner.advance(token)


async def collect_grpc(
    servicer: RunnerServicer, message: runner_pb2.GenerateRequest
) -> tuple[list[str], list[generation_pb2.ToolCallDelta], generation_pb2.Finished]:
    texts, calls, finished = [], [], None
    async for response in servicer.Generate(message, None):  # type: ignore[arg-type]
        event = response.event
        if event.HasField("finished"):
            finished = event.finished
        elif event.delta.HasField("tool_call"):
            calls.append(event.delta.tool_call)
        else:
            texts.append(event.delta.text)
    assert finished is not None
    return texts, calls, finished


@pytest.mark.parametrize("opens_a_call", [True, False])
async def test_answers_are_text_or_a_reported_call_never_call_text(
    hermes_model: Path, tmp_path: Path, opens_a_call: bool
) -> None:
    tokenizer = load_tokenizer(hermes_model)
    compiler = ConstraintCompiler(
        tokenizer._tokenizer, len(tokenizer._tokenizer), tokenizer.eos_token_ids
    )
    opener = tokenizer.encode("<", add_special_tokens=False)[0]

    def constrain(generation: GenerationRequest) -> LogitsConstraint | None:
        inner = compiler.for_request(generation)
        assert inner is not None, "tools offered to a <tool_call> template are constrained"
        return OpensACall(inner, opener) if opens_a_call else inner

    (tmp_path / "hermes").symlink_to(hermes_model)
    runner = make_runner(tmp_path, registry_with(CpuBackend(constraints=constrain)))
    await runner.start()
    try:
        servicer = RunnerServicer(runner)
        for seed in range(3):
            texts, calls, finished = await collect_grpc(servicer, weather_request(seed))
            assert "<" not in "".join(texts)[:1], "text never starts a call"
            if opens_a_call:
                assert finished.finish_reason == generation_pb2.FINISH_REASON_TOOL_CALLS
                assert [(c.index, c.name) for c in calls] == [(0, "weather")]
                assert calls[0].id.startswith("call_")
                jsonschema.validate(json.loads(calls[0].arguments_fragment), WEATHER)
                layout = set(calls[0].arguments_fragment) & set("\t\r\n")
                assert not layout, "calls are written compactly (no tokens spent on indentation)"
                assert texts == []
                assert finished.text == ""
            else:
                assert calls == []
                assert "".join(texts) == finished.text
    finally:
        await runner.close()


async def test_an_unusable_tool_schema_is_invalid_argument_naming_the_tool(
    start_runner: StartRunner,
) -> None:
    runner = await start_runner()
    message = request()
    bad = json_format.ParseDict({"type": "nonsense"}, struct_pb2.Struct())
    message.tools.append(tools_pb2.ToolSpec(name="ok", description="fine"))
    message.tools.append(tools_pb2.ToolSpec(name="bad", description="x", parameters_schema=bad))
    call = runner.stub.Generate(message, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    typed = from_rpc_error(raised.value)
    assert isinstance(typed, InvalidArgument)
    assert [v.field for v in typed.violations] == ["tools[1].parameters_schema"]
