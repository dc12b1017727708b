"""Conversions between the shared protos and the gateway's domain values."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from agentmesh.common.v1 import generation_pb2, messages_pb2, tools_pb2

from .domain import (
    ChatMessage,
    FinishReason,
    GenerationConfig,
    JsonObject,
    Role,
    ToolCall,
    ToolSpec,
    Usage,
)

ROLE_FROM_PROTO = {
    messages_pb2.ROLE_SYSTEM: Role.SYSTEM,
    messages_pb2.ROLE_USER: Role.USER,
    messages_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    messages_pb2.ROLE_TOOL: Role.TOOL,
}
ROLE_TO_PROTO = {role: value for value, role in ROLE_FROM_PROTO.items()}
FINISH_TO_PROTO = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: generation_pb2.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: generation_pb2.FINISH_REASON_CONTENT_FILTER,
}
FINISH_FROM_PROTO = {value: reason for reason, value in FINISH_TO_PROTO.items()}


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def dict_to_struct(value: JsonObject) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


def message_from_proto(message: messages_pb2.Message) -> ChatMessage:
    return ChatMessage(
        role=ROLE_FROM_PROTO.get(message.role, Role.USER),
        content=message.content,
        name=message.name,
        tool_calls=tuple(
            ToolCall(tc.id, tc.name, struct_to_dict(tc.arguments)) for tc in message.tool_calls
        ),
        tool_call_id=message.tool_call_id,
    )


def message_to_proto(message: ChatMessage) -> messages_pb2.Message:
    return messages_pb2.Message(
        role=ROLE_TO_PROTO[message.role],
        content=message.content,
        name=message.name,
        tool_calls=[tool_call_to_proto(tc) for tc in message.tool_calls],
        tool_call_id=message.tool_call_id,
    )


def tool_call_to_proto(call: ToolCall) -> messages_pb2.ToolCall:
    return messages_pb2.ToolCall(
        id=call.id, name=call.name, arguments=dict_to_struct(call.arguments)
    )


def tool_from_proto(tool: tools_pb2.ToolSpec) -> ToolSpec:
    return ToolSpec(tool.name, tool.description, struct_to_dict(tool.parameters_schema))


def tool_to_proto(tool: ToolSpec) -> tools_pb2.ToolSpec:
    return tools_pb2.ToolSpec(
        name=tool.name,
        description=tool.description,
        parameters_schema=dict_to_struct(tool.parameters),
    )


def config_from_proto(config: generation_pb2.GenerationConfig) -> GenerationConfig:
    def opt(field: Any) -> Any:
        return getattr(config, field) if config.HasField(field) else None

    return GenerationConfig(
        temperature=opt("temperature"),
        max_tokens=opt("max_tokens"),
        top_p=opt("top_p"),
        frequency_penalty=opt("frequency_penalty"),
        presence_penalty=opt("presence_penalty"),
        stop=tuple(config.stop),
        seed=opt("seed"),
        response_schema=(
            struct_to_dict(config.response_schema) if config.HasField("response_schema") else None
        ),
    )


def config_to_proto(config: GenerationConfig) -> generation_pb2.GenerationConfig:
    out = generation_pb2.GenerationConfig(stop=list(config.stop))
    for field in ("temperature", "max_tokens", "top_p", "frequency_penalty", "presence_penalty"):
        value = getattr(config, field)
        if value is not None:
            setattr(out, field, value)
    if config.seed is not None:
        out.seed = config.seed
    if config.response_schema is not None:
        out.response_schema.CopyFrom(dict_to_struct(config.response_schema))
    return out


def usage_to_proto(usage: Usage) -> generation_pb2.Usage:
    return generation_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_micros_usd=usage.cost_micros_usd,
        estimated=usage.estimated,
    )


def usage_from_proto(usage: generation_pb2.Usage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        estimated=usage.estimated,
    )
