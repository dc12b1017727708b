"""Small builders for requests and assertions shared by the gateway tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentmesh_gateway.domain import (
    AttemptFailed,
    AttemptStarted,
    ChatMessage,
    Finished,
    GenerateCall,
    GenerationConfig,
    Restart,
    Role,
    TextDelta,
    ToolSpec,
)

WEATHER_TOOL = ToolSpec(
    "get_weather",
    "Get the weather forecast for a city",
    {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
)


def ask(
    text: str = "What will the weather be like in Paris tomorrow?",
    route: str = "main",
    **changes: Any,
) -> GenerateCall:
    call = GenerateCall(
        messages=(
            ChatMessage(Role.SYSTEM, "You are a concise travel assistant."),
            ChatMessage(Role.USER, text),
        ),
        route=route,
    )
    return replace(call, **changes)


def config(**values: Any) -> GenerationConfig:
    return GenerationConfig(**values)


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def finished(events: list[Any]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished), last
    return last


def kinds(events: list[Any]) -> list[str]:
    names = {
        AttemptStarted: "started",
        AttemptFailed: "failed",
        Restart: "restart",
        Finished: "finished",
    }
    return [names.get(type(e), "delta") for e in events]


def compact(events: list[Any]) -> list[str]:
    """Kinds with consecutive deltas collapsed: ["started", "delta", "finished"]."""
    out: list[str] = []
    for kind in kinds(events):
        if not (kind == "delta" and out and out[-1] == "delta"):
            out.append(kind)
    return out


def one(provider: str, model: str, url: str) -> str:
    """A routes file with one route "main" of one deployment keyed by env var KEY."""
    return (
        f"routes:\n  main:\n    - {{provider: {provider}, model: {model}, "
        f"base_url: '{url}', api_key_env: KEY}}\n"
    )
