"""Domain values of the gateway: the normalized request, the normalized event stream, usage.

Events are small slotted frozen dataclasses: adapters build one per upstream chunk, so they
must stay cheap (no validation per chunk).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JsonObject = Mapping[str, Any]
"""A parsed JSON object (tool arguments, JSON schemas); values are JSON-compatible."""


class Role(enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.Enum):
    """The normalized finish reasons a caller sees."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


class ToolChoice(enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class CacheMode(enum.Enum):
    """How one request uses its route's response cache."""

    DEFAULT = "default"  # the route's policy
    SKIP = "skip"  # neither read nor store
    REFRESH = "refresh"  # do not read; store the fresh answer


class Locality(enum.Enum):
    """Where a deployment's model runs; a request may prefer one (the user's setting)."""

    LOCAL = "local"  # hardware the operator runs: the local runner, Ollama, a self-hosted URL
    ONLINE = "online"  # a hosted provider


class MidStreamPolicy(enum.Enum):
    """What to do when a deployment fails after output was streamed."""

    RESTART = "restart"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call; ``arguments`` is the parsed JSON object."""

    id: str
    name: str
    arguments: JsonObject


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str = ""
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: JsonObject


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Sampling settings; ``None`` means "provider default"."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_schema: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """One normalized generation request, as the gateway core receives it."""

    messages: tuple[ChatMessage, ...]
    route: str = ""
    provider: str = ""
    model: str = ""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = ToolChoice.AUTO
    config: GenerationConfig = field(default_factory=GenerationConfig)
    tenant: str = ""
    idempotency_key: str = ""
    mid_stream: MidStreamPolicy = MidStreamPolicy.RESTART
    fail_fast_on_rate_limit: bool = False
    session: str = ""  # "sessions/{id}" this call serves, for traces
    agent: str = ""
    cache: CacheMode = CacheMode.DEFAULT
    prefer: Locality | None = None  # deployments of this locality first, the others after


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    cost_micros_usd: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# --- events an adapter yields (one attempt) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call; ``id`` and ``name`` are set on the first piece of an index."""

    index: int
    id: str
    name: str
    arguments_fragment: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The upstream stream completed; ``usage`` is None when the provider reported none."""

    finish_reason: FinishReason
    usage: Usage | None


ProviderEvent = TextDelta | ThinkingDelta | ToolCallDelta | StreamEnd


# --- events the gateway core yields (the whole call) ------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    provider: str
    model: str
    deployment: str
    attempt: int


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An attempt failed; the error carries no secret (adapters never echo keys)."""

    code: str  # canonical status name, e.g. "UNAVAILABLE"
    reason: str  # UPPER_SNAKE
    message: str
    retryable: bool
    will_fall_back: bool
    attempt: int
    streamed_tokens: int
    deployment: str
    # Tokens the attempt used although it failed (an answer that missed the schema).
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Restart:
    reason: str
    next_attempt: int


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage
    provider: str
    model: str
    deployment: str
    text: str
    tool_calls: tuple[ToolCall, ...]
    structured_output: JsonObject | None = None
    cached: bool = False  # replayed from the response cache (cost 0, no provider called)


GatewayEvent = AttemptStarted | AttemptFailed | Restart | Finished | ProviderEvent
