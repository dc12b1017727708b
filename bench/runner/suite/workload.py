"""What every arm of the runner benchmark is asked, and what is measured of each answer.

Every server under test (the runner on either backend, ``mlx_lm.server``, mlx-lm in-process)
is driven through one :class:`Driver` interface with the same message lists, so the only
difference between two arms is the server.

Prompt reuse is controlled, because ``mlx_lm.server`` (``LRUPromptCache``) and the runner's
``cpu`` backend both reuse the longest cached prompt prefix across requests, which makes a
repeated prompt nearly free to prefill:

* :func:`cold` messages start with a number used once per run, so no two requests share more
  than the chat template's first few tokens: every server prefills the whole prompt;
* :func:`warm` messages share one system prompt and differ in the question, so a server that
  reuses prefixes across requests prefills only the question (after a priming request).

Each :class:`Stream` records the prompt tokens the server reports as cached, so a reader can
see which arms reused what.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Concurrent",
    "Driver",
    "Message",
    "Stream",
    "Summary",
    "cold",
    "concurrently",
    "primer",
    "summarize",
    "warm",
]

SYSTEM = "You are a helpful assistant. Answer in detail, step by step."
TOPICS = (
    "how a bicycle works",
    "why the sky is blue",
    "how bread is baked",
    "how a refrigerator keeps food cold",
    "how bees make honey",
    "how a steam engine works",
    "why leaves change colour in autumn",
    "how a compass finds north",
    "how rain forms",
    "how a lighthouse guides ships",
    "how paper is made",
    "how a river shapes a valley",
    "how a piano makes sound",
    "how glass is made",
    "how the heart pumps blood",
    "how a sailboat moves against the wind",
)


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


def _question(index: int) -> Message:
    return Message("user", f"Explain {TOPICS[index % len(TOPICS)]}.")


def cold(index: int, topic: int | None = None) -> list[Message]:
    """A prompt sharing nothing but the template's first tokens with any other ``index``
    (the question is topic ``index``, or ``topic`` if given)."""
    return [
        Message("system", f"Request {index}. {SYSTEM}"),
        _question(index if topic is None else topic),
    ]


def warm(index: int) -> list[Message]:
    """A prompt sharing its whole system prompt with every other ``index`` and :func:`primer`."""
    return [Message("system", SYSTEM), _question(index)]


def primer() -> list[Message]:
    """The shared system prompt with a question no :func:`warm` prompt asks."""
    return [Message("system", SYSTEM), Message("user", "Say hello.")]


@dataclass(frozen=True)
class Stream:
    """One streamed answer, timed from sending the request."""

    ttft: float  # seconds to the first text
    seconds: float  # seconds to the end of the stream
    completion_tokens: int  # as the server counts them (its tokenizer)
    prompt_tokens: int
    cached_prompt_tokens: int  # prompt tokens the server did not process again
    text: str

    @property
    def decode_tps(self) -> float:
        """Tokens after the first per second after the first: the decode rate."""
        return (self.completion_tokens - 1) / max(self.seconds - self.ttft, 1e-9)

    @property
    def end_to_end_tps(self) -> float:
        return self.completion_tokens / max(self.seconds, 1e-9)


class Driver(Protocol):
    """A server under test."""

    label: str

    async def stream(
        self, messages: Sequence[Message], max_tokens: int, *, schema: dict[str, Any] | None = None
    ) -> Stream:
        """Greedy (temperature 0) answer of at most ``max_tokens`` tokens."""
        ...


@dataclass(frozen=True)
class Summary:
    """Medians over several single-stream runs, plus what varied between them."""

    runs: int
    ttft_ms: float
    decode_tps: float
    end_to_end_tps: float
    completion_tokens: list[int]
    prompt_tokens: list[int]
    cached_prompt_tokens: list[int]


def summarize(streams: Sequence[Stream]) -> Summary:
    return Summary(
        runs=len(streams),
        ttft_ms=statistics.median(s.ttft for s in streams) * 1000,
        decode_tps=statistics.median(s.decode_tps for s in streams),
        end_to_end_tps=statistics.median(s.end_to_end_tps for s in streams),
        completion_tokens=[s.completion_tokens for s in streams],
        prompt_tokens=[s.prompt_tokens for s in streams],
        cached_prompt_tokens=[s.cached_prompt_tokens for s in streams],
    )


@dataclass(frozen=True)
class Concurrent:
    """Several streams started together."""

    streams: int
    seconds: float  # first request sent to last stream ended
    completion_tokens: int  # summed over the streams
    aggregate_tps: float  # completion_tokens / seconds
    median_ttft_ms: float
    cached_prompt_tokens: int  # summed over the streams


async def concurrently(
    driver: Driver, prompts: Sequence[Sequence[Message]], max_tokens: int
) -> Concurrent:
    start = time.perf_counter()
    streams = await asyncio.gather(*(driver.stream(p, max_tokens) for p in prompts))
    seconds = time.perf_counter() - start
    tokens = sum(s.completion_tokens for s in streams)
    return Concurrent(
        streams=len(streams),
        seconds=seconds,
        completion_tokens=tokens,
        aggregate_tps=tokens / seconds,
        median_ttft_ms=statistics.median(s.ttft for s in streams) * 1000,
        cached_prompt_tokens=sum(s.cached_prompt_tokens for s in streams),
    )
