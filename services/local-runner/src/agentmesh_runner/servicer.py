"""gRPC servicer of the local runner: converts protos to domain calls and back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.common.v1 import generation_pb2, messages_pb2
from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_common import FieldViolation, InvalidArgument

from .constraints import schema_problem
from .domain import (
    ChatMessage,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    ModelInfo,
    SamplingConfig,
    TextDelta,
    ToolDefinition,
)
from .runner import LocalRunner

__all__ = ["RunnerServicer", "to_generation_request"]

_Context = grpc.aio.ServicerContext[Any, Any]

PROVIDER = "local"
DEFAULT_MAX_TOKENS = 256
MAX_STOP_SEQUENCES = 8

_ROLES = {
    messages_pb2.ROLE_SYSTEM: "system",
    messages_pb2.ROLE_USER: "user",
    messages_pb2.ROLE_ASSISTANT: "assistant",
    messages_pb2.ROLE_TOOL: "tool",
}
_FINISH = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: generation_pb2.FINISH_REASON_TOOL_CALLS,
}


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _integral(value: Any) -> Any:
    """A Struct's numbers are all doubles; JSON schema keywords such as ``maxLength`` must
    be integers, so every whole number becomes one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _config(config: generation_pb2.GenerationConfig) -> SamplingConfig:
    violations: list[FieldViolation] = []

    def check(name: str, ok: bool, rule: str) -> None:
        if not ok:
            violations.append(FieldViolation(f"config.{name}", rule))

    if config.HasField("temperature"):
        check("temperature", 0 <= config.temperature <= 2, "must be between 0 and 2")
    if config.HasField("top_p"):
        check("top_p", 0 < config.top_p <= 1, "must be greater than 0 and at most 1")
    if config.HasField("max_tokens"):
        check("max_tokens", config.max_tokens >= 1, "must be at least 1")
    for name in ("presence_penalty", "frequency_penalty"):
        if config.HasField(name):
            check(name, -2 <= getattr(config, name) <= 2, "must be between -2 and 2")
    if config.HasField("repetition_penalty"):
        check("repetition_penalty", config.repetition_penalty > 0, "must be greater than 0")
    check("stop", len(config.stop) <= MAX_STOP_SEQUENCES, "at most 8 stop sequences")
    check("stop", all(config.stop), "stop sequences must not be empty")
    schema_json = None
    if config.HasField("response_schema"):
        schema_json = json.dumps(_integral(json_format.MessageToDict(config.response_schema)))
        problem = schema_problem(schema_json)
        check("response_schema", problem is None, f"not a usable JSON schema: {problem}")
    if violations:
        raise InvalidArgument("generation config out of range", violations=violations)
    return SamplingConfig(
        max_tokens=config.max_tokens if config.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=config.temperature if config.HasField("temperature") else 0.0,
        top_p=config.top_p if config.HasField("top_p") else 1.0,
        stop=tuple(config.stop),
        presence_penalty=config.presence_penalty if config.HasField("presence_penalty") else None,
        frequency_penalty=(
            config.frequency_penalty if config.HasField("frequency_penalty") else None
        ),
        repetition_penalty=(
            config.repetition_penalty if config.HasField("repetition_penalty") else None
        ),
        seed=config.seed if config.HasField("seed") else None,
        response_schema_json=schema_json,
    )


def to_generation_request(request: runner_pb2.GenerateRequest) -> GenerationRequest:
    """Validate and convert a GenerateRequest (INVALID_ARGUMENT naming the bad fields)."""
    violations: list[FieldViolation] = []
    if not request.model:
        violations.append(FieldViolation("model", "must not be empty"))
    if not request.messages:
        violations.append(FieldViolation("messages", "at least one message is required"))
    messages: list[ChatMessage] = []
    for index, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            violations.append(FieldViolation(f"messages[{index}].role", "must be set"))
            continue
        messages.append(ChatMessage(role=role, content=message.content, name=message.name))
    schemas = [
        json.dumps(_integral(json_format.MessageToDict(tool.parameters_schema)))
        for tool in request.tools
    ]
    for index, schema_json in enumerate(schemas):
        # A template with <tool_call> constrains calls to this schema: it must compile.
        if (problem := schema_problem(schema_json)) is not None:
            violations.append(
                FieldViolation(
                    f"tools[{index}].parameters_schema", f"not a usable JSON schema: {problem}"
                )
            )
    if request.HasField("keep_alive") and _seconds(request.keep_alive) < 0:
        violations.append(FieldViolation("keep_alive", "must not be negative"))
    if violations:
        raise InvalidArgument("invalid generate request", violations=violations)
    return GenerationRequest(
        model=request.model,
        messages=tuple(messages),
        config=_config(request.config),
        tools=tuple(
            ToolDefinition(name=tool.name, description=tool.description, parameters_json=schema)
            for tool, schema in zip(request.tools, schemas, strict=True)
        ),
        keep_alive_seconds=(
            _seconds(request.keep_alive) if request.HasField("keep_alive") else None
        ),
        cache_key=request.cache_key,
        request_id=request.request_id,
    )


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _model_info(info: ModelInfo) -> runner_pb2.ModelInfo:
    return runner_pb2.ModelInfo(
        name=info.name,
        path=info.path,
        backend=info.backend,
        loaded=info.loaded,
        parameters=info.facts.parameters,
        size_bytes=info.facts.size_bytes,
        context_length=info.facts.context_length,
        last_used_time=_timestamp(info.last_used),
        expire_time=_timestamp(info.expires_at),
    )


def _finished(event: GenerationFinished) -> generation_pb2.GenerateEvent:
    usage = event.usage
    return generation_pb2.GenerateEvent(
        finished=generation_pb2.Finished(
            finish_reason=_FINISH[event.finish_reason],
            usage=generation_pb2.Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                cached_prompt_tokens=usage.cached_prompt_tokens,
            ),
            provider=PROVIDER,
            model=event.model,
            text=event.text,
        )
    )


class RunnerServicer(runner_pb2_grpc.LocalRunnerServiceServicer):
    """`agentmesh.runner.v1.LocalRunnerService`."""

    def __init__(self, runner: LocalRunner) -> None:
        self._runner = runner

    async def Generate(
        self, request: runner_pb2.GenerateRequest, context: _Context
    ) -> AsyncIterator[runner_pb2.GenerateResponse]:
        generation = to_generation_request(request)
        events = self._runner.generate(generation)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield runner_pb2.GenerateResponse(
                        event=generation_pb2.GenerateEvent(
                            delta=generation_pb2.Delta(text=event.text)
                        )
                    )
                else:
                    for index, call in enumerate(event.tool_calls):
                        yield runner_pb2.GenerateResponse(
                            event=generation_pb2.GenerateEvent(
                                delta=generation_pb2.Delta(
                                    tool_call=generation_pb2.ToolCallDelta(
                                        index=index,
                                        id=call.call_id,
                                        name=call.name,
                                        arguments_fragment=call.arguments_json,
                                    )
                                )
                            )
                        )
                    finished = _finished(event)
                    finished.finished.model = request.model
                    yield runner_pb2.GenerateResponse(event=finished)
        finally:
            await events.aclose()

    async def ListModels(
        self, request: runner_pb2.ListModelsRequest, context: _Context
    ) -> runner_pb2.ListModelsResponse:
        if request.page_size < 0 or request.page_size > 1000:
            raise InvalidArgument(
                "page_size out of range",
                violations=[FieldViolation("page_size", "must be between 1 and 1000")],
            )
        size = request.page_size or 100
        try:
            start = int(request.page_token or "0")
        except ValueError:
            start = -1
        if start < 0:
            raise InvalidArgument(
                "invalid page token",
                violations=[FieldViolation("page_token", "use a token from a previous page")],
            )
        models = await self._runner.list_models()
        page = models[start : start + size]
        more = start + size < len(models)
        return runner_pb2.ListModelsResponse(
            models=[_model_info(m) for m in page],
            next_page_token=str(start + size) if more else "",
        )

    async def LoadModel(
        self, request: runner_pb2.LoadModelRequest, context: _Context
    ) -> runner_pb2.LoadModelResponse:
        if not request.model:
            raise InvalidArgument(
                "model is required", violations=[FieldViolation("model", "must not be empty")]
            )
        keep_alive = _seconds(request.keep_alive) if request.HasField("keep_alive") else None
        if keep_alive is not None and keep_alive < 0:
            raise InvalidArgument(
                "keep_alive is negative",
                violations=[FieldViolation("keep_alive", "must not be negative")],
            )
        result = await self._runner.load(
            request.model, keep_alive_seconds=keep_alive, backend=request.backend
        )
        duration = Duration()
        duration.FromNanoseconds(int(result.load_seconds * 1e9))
        return runner_pb2.LoadModelResponse(model=_model_info(result.model), load_duration=duration)

    async def UnloadModel(
        self, request: runner_pb2.UnloadModelRequest, context: _Context
    ) -> runner_pb2.UnloadModelResponse:
        if not request.model:
            raise InvalidArgument(
                "model is required", violations=[FieldViolation("model", "must not be empty")]
            )
        return runner_pb2.UnloadModelResponse(was_loaded=await self._runner.unload(request.model))

    async def GetStatus(
        self, request: runner_pb2.GetStatusRequest, context: _Context
    ) -> runner_pb2.GetStatusResponse:
        status = self._runner.status()
        return runner_pb2.GetStatusResponse(
            models=[
                runner_pb2.LoadedModelStatus(
                    model=_model_info(m.model),
                    queue_depth=m.queue_depth,
                    active_requests=m.active_requests,
                    recent_tokens_per_second=m.recent_tokens_per_second,
                    prompt_cache_hits=m.prompt_cache_hits,
                )
                for m in status.models
            ],
            memory_in_use_bytes=status.memory_in_use_bytes,
            memory_budget_bytes=status.memory_budget_bytes,
            queue_depth=status.queue_depth,
            recent_tokens_per_second=status.recent_tokens_per_second,
            default_backend=status.default_backend,
            device=status.device,
        )
