"""Checks of a call before it is sent, and of the structured output it returned."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from agentmesh_common import FieldViolation, InvalidArgument

from .domain import GenerateCall
from .errors import ErrorKind, UpstreamError


def validated_json(text: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`")
        body = body[4:] if body.startswith("json") else body
    try:
        value = json.loads(body)
    except ValueError:
        raise UpstreamError(ErrorKind.INVALID_OUTPUT, "the output is not JSON") from None
    try:
        jsonschema.validate(value, dict(schema))
    except jsonschema.ValidationError as exc:
        raise UpstreamError(
            ErrorKind.INVALID_OUTPUT, f"the output does not match the schema: {exc.message}"
        ) from None
    if not isinstance(value, dict):
        return {"value": value}
    return value


def validate(call: GenerateCall) -> None:
    """INVALID_ARGUMENT for a request no provider could serve."""
    problems: list[FieldViolation] = []
    cfg = call.config

    def check(name: str, value: float | None, low: float, high: float) -> None:
        if value is not None and not low <= value <= high:
            problems.append(FieldViolation(f"config.{name}", f"must be between {low} and {high}"))

    if not call.messages:
        problems.append(FieldViolation("messages", "at least one message is required"))
    check("temperature", cfg.temperature, 0.0, 2.0)
    check("top_p", cfg.top_p, 0.0, 1.0)
    check("frequency_penalty", cfg.frequency_penalty, -2.0, 2.0)
    check("presence_penalty", cfg.presence_penalty, -2.0, 2.0)
    if cfg.max_tokens is not None and cfg.max_tokens < 1:
        problems.append(FieldViolation("config.max_tokens", "must be at least 1"))
    if any(not s for s in cfg.stop):
        problems.append(FieldViolation("config.stop", "stop sequences must not be empty"))
    if cfg.response_schema is not None:
        try:
            jsonschema.validators.validator_for(dict(cfg.response_schema)).check_schema(
                dict(cfg.response_schema)
            )
        except jsonschema.SchemaError as exc:
            problems.append(
                FieldViolation("config.response_schema", f"not a JSON schema: {exc.message}")
            )
    names = [t.name for t in call.tools]
    if len(set(names)) != len(names) or any(not n for n in names):
        problems.append(FieldViolation("tools", "tool names must be unique and non-empty"))
    if problems:
        raise InvalidArgument("invalid generate request", violations=problems)
