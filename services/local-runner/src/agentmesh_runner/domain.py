"""Domain values of the local runner: requests, sampling settings, stream events, model facts.

Frozen dataclasses only; nothing here imports grpc or MLX.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why a generation stopped, normalized across backends."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True)
class ChatMessage:
    """One message handed to the model's chat template."""

    role: str
    content: str
    name: str = ""


@dataclass(frozen=True)
class ToolDefinition:
    """A tool offered to the chat template; ``parameters_json`` is its JSON schema text."""

    name: str
    description: str
    parameters_json: str


@dataclass(frozen=True)
class SamplingConfig:
    """Validated generation settings; ``None`` means the backend default."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    # JSON schema text the answer must match (token-level constrained decoding), or None.
    response_schema_json: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: the conversation, how to sample, and how to treat the model after."""

    model: str
    messages: tuple[ChatMessage, ...]
    config: SamplingConfig = field(default_factory=SamplingConfig)
    tools: tuple[ToolDefinition, ...] = ()
    keep_alive_seconds: float | None = None
    cache_key: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class TokenUsage:
    """Exact token counts, from the model's own tokenizer."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationTimings:
    """Where the time of one generation went, in seconds."""

    queue_wait: float
    prefill: float
    decode: float


@dataclass(frozen=True)
class TextDelta:
    """The next piece of answer text."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A call of an offered tool the model answered with (``tool_calls.py``)."""

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class GenerationFinished:
    """The last event of a successful generation."""

    finish_reason: FinishReason
    usage: TokenUsage
    model: str
    text: str
    timings: GenerationTimings
    tool_calls: tuple[ToolCall, ...] = ()


GenerationEvent = TextDelta | GenerationFinished


@dataclass(frozen=True)
class ModelFacts:
    """What a backend knows about a model directory without loading it."""

    parameters: int
    size_bytes: int
    context_length: int


@dataclass(frozen=True)
class ModelInfo:
    """A model the runner can serve, and its state."""

    name: str
    path: str
    backend: str
    loaded: bool
    facts: ModelFacts
    last_used: float | None = None
    expires_at: float | None = None
    description: str = ""


@dataclass(frozen=True)
class LoadedModelStatus:
    """Live figures of one loaded model."""

    model: ModelInfo
    queue_depth: int
    active_requests: int
    recent_tokens_per_second: float
    prompt_cache_hits: int


@dataclass(frozen=True)
class RunnerStatus:
    """The runner as a whole."""

    models: tuple[LoadedModelStatus, ...]
    memory_in_use_bytes: int
    memory_budget_bytes: int
    queue_depth: int
    recent_tokens_per_second: float
    default_backend: str
    device: str


@dataclass(frozen=True)
class LoadResult:
    """A model after `load`, and how long loading took (0 if it was loaded already)."""

    model: ModelInfo
    load_seconds: float
