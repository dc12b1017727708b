"""What the ``mlx`` and ``cpu`` backends share: the model directory check, the chat prompt,
streamed text with stop sequences, and the final event of a generation.

Both read the same mlx-lm model directories with the same tokenizer wrapper, so a request
renders to the same tokens and streams the same text whichever backend serves it.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentmesh_common import AgentmeshError, FailedPrecondition, Internal, InvalidArgument
from agentmesh_runner.domain import (
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    GenerationTimings,
    ModelFacts,
    TokenUsage,
)
from agentmesh_runner.tool_calls import TAG, parse_tool_call

from .base import Job

__all__ = [
    "Output",
    "check_model_directory",
    "finished_event",
    "generation_failed",
    "read_safetensors_header",
    "render_prompt",
]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The tensor table of a safetensors file and the offset where tensor data begins."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def _safetensors_parameters(path: Path, group_size: int) -> int:
    """Parameter count from a safetensors header, without reading the tensors: a quantized
    weight holds ``group_size`` values per scale (its packed words and its scales and biases
    are storage, not parameters)."""
    header, _ = read_safetensors_header(path)
    total = 0
    for name, entry in header.items():
        module, _, kind = name.rpartition(".")
        scales = header.get(f"{module}.scales")
        if scales is None:
            total += math.prod(int(dim) for dim in entry["shape"])
        elif kind == "weight":
            total += math.prod(int(dim) for dim in scales["shape"]) * group_size
    return total


def check_model_directory(path: Path) -> ModelFacts:
    """FailedPrecondition naming what is missing unless ``path`` is an mlx-lm model
    directory; its facts otherwise, read from headers only."""
    if not path.is_dir():
        raise FailedPrecondition(f"model directory {path} does not exist")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FailedPrecondition(
            f"{path} is not a model: config.json is missing",
            reason="MODEL_FILE_MISSING",
            metadata={"missing_file": "config.json"},
        )
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FailedPrecondition(
            f"{path} is not a model: tokenizer.json is missing",
            reason="MODEL_FILE_MISSING",
            metadata={"missing_file": "tokenizer.json"},
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FailedPrecondition(
            f"{path} is not a model: model.safetensors is missing",
            reason="MODEL_FILE_MISSING",
            metadata={"missing_file": "model.safetensors"},
        )
    try:
        config = json.loads(config_path.read_text())
        group_size = int((config.get("quantization") or {}).get("group_size", 64))
        parameters = sum(_safetensors_parameters(w, group_size) for w in weights)
    except (OSError, ValueError, struct.error) as exc:
        raise FailedPrecondition(
            f"{path} is not a valid model: {exc}", reason="MODEL_INVALID"
        ) from exc
    return ModelFacts(
        parameters=parameters,
        size_bytes=sum(w.stat().st_size for w in weights),
        context_length=int(config.get("max_position_embeddings") or 0),
    )


def render_prompt(tokenizer: Any, request: GenerationRequest, model_name: str) -> list[int]:
    """The prompt tokens of ``request`` through the model's chat template."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters_json or "{}"),
            },
        }
        for t in request.tools
    ]
    try:
        tokens = tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True
        )
    except Exception as exc:  # jinja raises TemplateError for what it cannot render
        raise InvalidArgument(
            f"the chat template of {model_name} rejected the messages: {exc}",
            reason="CHAT_TEMPLATE_FAILED",
        ) from exc
    if hasattr(tokens, "get"):  # some tokenizers answer a BatchEncoding
        tokens = tokens["input_ids"]
    return [int(t) for t in tokens]


def generation_failed(exc: Exception) -> AgentmeshError:
    """A library failure in the middle of generating, as the domain error jobs fail with
    (a domain error raised from inside the library, e.g. by a constraint, stays itself)."""
    if isinstance(exc, AgentmeshError):
        return exc
    return Internal(f"generation failed: {type(exc).__name__}: {exc}", reason="GENERATION_FAILED")


def finished_event(
    job: Job,
    reason: FinishReason,
    *,
    model: str,
    text: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_prompt_tokens: int,
    began: float,
    first_token_at: float | None,
) -> GenerationFinished:
    """The last event of a generation: prefill runs from ``began`` to the first token."""
    now = time.monotonic()
    first = first_token_at or now
    call = parse_tool_call(text) if job.request.tools and reason is FinishReason.STOP else None
    if call is not None:
        reason, text = FinishReason.TOOL_CALLS, ""
    return GenerationFinished(
        finish_reason=reason,
        tool_calls=(call,) if call is not None else (),
        usage=TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_prompt_tokens=cached_prompt_tokens,
        ),
        model=model,
        text=text,
        timings=GenerationTimings(
            queue_wait=job.queue_wait, prefill=first - began, decode=now - first
        ),
    )


class Output:
    """Turns tokens into streamed text, honouring stop sequences.

    Text that might be the start of a stop sequence is held back until it is clearly not;
    with tools offered, so is an answer that is (or may become) a ``<tool_call>``, which
    the final event reports as a call instead.
    """

    def __init__(self, job: Job, detokenizer: Any, stops: Sequence[str]) -> None:
        self.job = job
        self._detokenizer = detokenizer
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._sent = 0
        self.final_text: str | None = None
        self._tool_tag = TAG if job.request.tools else ""

    def add(self, token: int) -> bool:
        """Feed one token; True when a stop sequence ended the answer."""
        self._detokenizer.add_token(token)
        return self._push(self._detokenizer.last_segment)

    def flush(self) -> None:
        self._detokenizer.finalize()
        if not self._push(self._detokenizer.last_segment) and not self._is_tool_call():
            self.job.delta(self._text[self._sent :])
            self._sent = len(self._text)

    def _is_tool_call(self) -> bool:
        return bool(self._tool_tag) and self._text.startswith(self._tool_tag)

    @property
    def text(self) -> str:
        return self.final_text if self.final_text is not None else self._text

    def _push(self, segment: str) -> bool:
        if self.final_text is not None:
            return True
        self._text += segment
        if self._tool_tag and (
            self._text.startswith(self._tool_tag) or self._tool_tag.startswith(self._text)
        ):
            return False  # a tool call, or maybe one: nothing to stream as text
        if not self._stops:
            self.job.delta(self._text[self._sent :])
            self._sent = len(self._text)
            return False
        start = max(0, self._sent - self._longest)
        found = [i for i in (self._text.find(s, start) for s in self._stops) if i >= 0]
        if found:
            end = min(found)
            self.job.delta(self._text[self._sent : end])
            self.final_text = self._text[:end]
            self._sent = end
            return True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text)), hold, -1):
                if self._text.endswith(stop[:k]):
                    hold = k
                    break
        safe = len(self._text) - hold
        if safe > self._sent:
            self.job.delta(self._text[self._sent : safe])
            self._sent = safe
        return False
