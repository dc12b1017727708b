"""The response cache: exact match on the normalized request, tenant-scoped, opt-in per route.

A key is the SHA-256 of the canonical JSON of what decides an answer (route, messages, tools,
tool choice, generation config with the response schema), under a prefix derived from the
tenant, so one tenant never reads another's answers. A value is the answer of the one attempt
that finished (its deltas, consecutive text merged, and ``finished``), stored only when the
call finished without a restart; errors, cancelled or partial streams never reach
:meth:`ResponseCache.store`. A hit replays the value as a normal stream whose ``finished``
says ``cached`` and costs 0.

Backends (the :class:`CacheBackend` port): :class:`MemoryCache`, an in-process LRU with a byte
budget (the embedded default), and ``RedisCache`` (``cache_redis.py``) shared by replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .domain import (
    AttemptStarted,
    CacheMode,
    Finished,
    FinishReason,
    GatewayEvent,
    GenerateCall,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .observability import GatewayMetrics
from .routes import CachePolicy

_logger = logging.getLogger("agentmesh.gateway.cache")
FORMAT = 1
KEY_PREFIX = "agentmesh:gateway:cache:v1"
STORE_TIMEOUT = 0.5  # a slow cache never holds an answer back for long

Delta = TextDelta | ThinkingDelta | ToolCallDelta


class CacheBackend(Protocol):
    """Where answers are kept: bytes by key, each with its own time to live."""

    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """An in-process LRU within ``max_bytes`` (values only; keys are small)."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if len(value) > self.max_bytes:
            return  # larger than the whole budget: not worth evicting everything for
        self._drop(key)
        while self._entries and self.bytes + len(value) > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (self._clock() + ttl_seconds, value)
        self.bytes += len(value)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry[1])

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What a hit replays."""

    provider: str
    model: str
    deployment: str
    deltas: tuple[Delta, ...]
    finished: Finished

    def events(self) -> list[GatewayEvent]:
        """The answer as a normal stream: attempt 1, its deltas, ``finished`` (cached, free)."""
        done = self.finished
        usage = Usage(
            prompt_tokens=done.usage.prompt_tokens,
            completion_tokens=done.usage.completion_tokens,
            cached_prompt_tokens=done.usage.cached_prompt_tokens,
            reasoning_tokens=done.usage.reasoning_tokens,
            estimated=done.usage.estimated,
            cost_micros_usd=0,
        )
        return [
            AttemptStarted(self.provider, self.model, self.deployment, 1),
            *self.deltas,
            Finished(
                finish_reason=done.finish_reason,
                usage=usage,
                provider=done.provider,
                model=done.model,
                deployment=done.deployment,
                text=done.text,
                tool_calls=done.tool_calls,
                structured_output=done.structured_output,
                cached=True,
            ),
        ]


def is_deterministic(call: GenerateCall) -> bool:
    return call.config.temperature == 0 or call.config.seed is not None


def request_digest(call: GenerateCall, route: str) -> str:
    """SHA-256 of the canonical JSON of everything that decides the answer."""
    cfg = call.config
    document = {
        "route": route,
        "messages": [
            [
                m.role.value,
                m.content,
                m.name,
                [[tc.id, tc.name, tc.arguments] for tc in m.tool_calls],
                m.tool_call_id,
            ]
            for m in call.messages
        ],
        "tools": [[t.name, t.description, t.parameters] for t in call.tools],
        "tool_choice": call.tool_choice.value,
        "config": [
            cfg.temperature,
            cfg.max_tokens,
            cfg.top_p,
            cfg.frequency_penalty,
            cfg.presence_penalty,
            list(cfg.stop),
            cfg.seed,
            cfg.response_schema,
        ],
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_key(call: GenerateCall, route: str) -> str:
    tenant = hashlib.sha256(call.tenant.encode()).hexdigest()[:16]
    return f"{KEY_PREFIX}:{tenant}:{request_digest(call, route)}"


def encode(deltas: Iterable[Delta], finished: Finished, started: AttemptStarted) -> bytes:
    events: list[list[Any]] = []
    for delta in deltas:
        kind = type(delta)
        if kind is TextDelta and events and events[-1][0] == "t":
            events[-1][1] += delta.text  # type: ignore[union-attr]
        elif kind is TextDelta:
            events.append(["t", delta.text])  # type: ignore[union-attr]
        elif kind is ThinkingDelta:
            events.append(["k", delta.text])  # type: ignore[union-attr]
        else:
            assert isinstance(delta, ToolCallDelta)
            events.append(["c", delta.index, delta.id, delta.name, delta.arguments_fragment])
    usage = finished.usage
    document = {
        "v": FORMAT,
        "started": [started.provider, started.model, started.deployment],
        "events": events,
        "finish": finished.finish_reason.value,
        "usage": [
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_prompt_tokens,
            usage.reasoning_tokens,
            usage.estimated,
        ],
        "answered": [finished.provider, finished.model, finished.deployment],
        "text": finished.text,
        "tool_calls": [[tc.id, tc.name, tc.arguments] for tc in finished.tool_calls],
        "structured": finished.structured_output,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes) -> CachedAnswer | None:
    """The stored answer, or None for a value this version cannot read."""
    try:
        document = json.loads(raw)
        if document.get("v") != FORMAT:
            return None
        deltas: list[Delta] = []
        for event in document["events"]:
            if event[0] == "t":
                deltas.append(TextDelta(event[1]))
            elif event[0] == "k":
                deltas.append(ThinkingDelta(event[1]))
            else:
                deltas.append(ToolCallDelta(event[1], event[2], event[3], event[4]))
        prompt, completion, cached, reasoning, estimated = document["usage"]
        provider, model, deployment = document["answered"]
        finished = Finished(
            finish_reason=FinishReason(document["finish"]),
            usage=Usage(prompt, completion, cached, reasoning, estimated),
            provider=provider,
            model=model,
            deployment=deployment,
            text=document["text"],
            tool_calls=tuple(ToolCall(i, n, a) for i, n, a in document["tool_calls"]),
            structured_output=document["structured"],
        )
        started = document["started"]
        return CachedAnswer(started[0], started[1], started[2], tuple(deltas), finished)
    except (ValueError, KeyError, TypeError, IndexError):
        return None


class ResponseCache:
    """Decides which calls are cached and reads and writes them through a backend."""

    def __init__(self, backend: CacheBackend, metrics: GatewayMetrics) -> None:
        self.backend = backend
        self._metrics = metrics

    def key_for(self, call: GenerateCall, route: str, policy: CachePolicy | None) -> str | None:
        """The key of a cacheable call, or None (route not opted in, skipped, random)."""
        if policy is None or call.cache is CacheMode.SKIP:
            return None
        if policy.deterministic_only and not is_deterministic(call):
            return None
        return cache_key(call, route)

    async def lookup(self, key: str, route: str) -> CachedAnswer | None:
        try:
            async with asyncio.timeout(STORE_TIMEOUT):  # no extra task, unlike wait_for
                raw = await self.backend.get(key)
        except Exception as exc:  # an unreachable cache is a miss, never a failed call
            _logger.warning(
                "cache read failed", extra={"backend": self.backend.name, "error": repr(exc)}
            )
            raw = None
        answer = decode(raw) if raw is not None else None
        result = "hit" if answer is not None else "miss"
        self._metrics.cache_requests.labels(route, result).inc()
        if answer is not None:
            self._metrics.cache_bytes_read.labels(route).inc(len(raw or b""))
        return answer

    async def store(
        self,
        key: str,
        route: str,
        policy: CachePolicy,
        started: AttemptStarted,
        deltas: Sequence[Delta],
        finished: Finished,
    ) -> None:
        value = encode(deltas, finished, started)
        try:
            await asyncio.wait_for(self.backend.set(key, value, policy.ttl_seconds), STORE_TIMEOUT)
        except Exception as exc:
            _logger.warning(
                "cache write failed", extra={"backend": self.backend.name, "error": repr(exc)}
            )
            return
        self._metrics.cache_bytes_written.labels(route).inc(len(value))
        if isinstance(self.backend, MemoryCache):
            self._metrics.cache_size_bytes.set(self.backend.bytes)

    async def aclose(self) -> None:
        await self.backend.aclose()
