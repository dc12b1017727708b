"""The ``cpu`` backend: mlx-lm Llama model directories run by a numpy forward pass.

MLX's Linux CPU path is slow on small machines; numpy's OpenBLAS matrix products are many
times faster for the same shapes (``llama_numpy``). Everything a client sees matches the
``mlx`` backend: the same tokenizer wrapper and chat template, streamed text with stop
sequences, usage counts, timings, and prompt caching by ``cache_key``.

Scheduling on the owner thread is one loop. Each step runs one forward pass over every
running sequence: the next token of each decoding one, plus up to a budget of prompt tokens
of new arrivals (their prefill goes in chunks, so running streams keep moving). A request
alone is a batch of one; arrivals join between steps, up to ``max_batch``; cancelled jobs
leave at the next step.

Prompt cache: finished sequences keep their KV cache in a small LRU. A new request copies
the longest prefix it shares with any entry (preferring its ``cache_key``'s own entry), as
mlx-lm's server reuses its longest cached prefix across all requests.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from mlx_lm.utils import load_config, load_tokenizer

from agentmesh_common import AgentmeshError, FailedPrecondition, InvalidArgument
from agentmesh_runner.constraints import ConstraintCompiler
from agentmesh_runner.domain import FinishReason, GenerationRequest, ModelFacts

from .base import Inbox, Job
from .common import (
    Output,
    check_model_directory,
    finished_event,
    generation_failed,
    read_safetensors_header,
    render_prompt,
)
from .llama_numpy import F32, KVCache, LlamaConfig, LlamaModel, Segment, load_llama

__all__ = ["ConstraintFactory", "CpuBackend", "CpuModel", "LogitsConstraint", "SamplingState"]

_logger = logging.getLogger("agentmesh.runner.cpu")

# Prompt tokens processed per step across arrivals: large enough for efficient matrix
# products, small enough that running streams stall at most ~0.5 s for a long prompt.
_PREFILL_TOKENS_PER_STEP = 512
_PENALTY_CONTEXT = 20  # mlx-lm's default context size for all three penalties


class LogitsConstraint(Protocol):
    """Per-request token constraint (e.g. a JSON schema): masks logits before sampling."""

    @property
    def finished(self) -> bool:
        """The answer is complete: generation stops with STOP."""
        ...

    def mask(self, logits: npt.NDArray[np.float32]) -> None:
        """Set disallowed tokens' logits to -inf, in place."""
        ...

    def advance(self, token: int) -> None:
        """Record the sampled ``token``."""
        ...


ConstraintFactory = Callable[[GenerationRequest], LogitsConstraint | None]


@dataclass
class SamplingState:
    """How one request picks its tokens; ``history`` is its prompt plus what it generated."""

    temperature: float
    rng: np.random.Generator
    history: list[int]
    top_p: float = 1.0
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    constraint: LogitsConstraint | None = None


def sample(logits: F32, state: SamplingState) -> int:
    """The next token from one row of logits (modified in place), with mlx-lm's semantics:
    penalties over the last 20 tokens, then argmax at temperature 0, else top-p on the
    untempered distribution and a categorical draw at ``temperature``."""
    window = np.asarray(state.history[-_PENALTY_CONTEXT:], dtype=np.int64)
    if window.size:
        if state.repetition_penalty:  # once per distinct token, sign-aware
            chosen = logits[window]
            logits[window] = np.where(
                chosen < 0, chosen * state.repetition_penalty, chosen / state.repetition_penalty
            )
        if state.presence_penalty:  # once per distinct token
            logits[window] -= np.float32(state.presence_penalty)
        if state.frequency_penalty:  # once per occurrence
            np.subtract.at(logits, window, np.float32(state.frequency_penalty))
    if state.temperature == 0:
        return int(np.argmax(logits))
    logprobs = logits - logits.max()
    logprobs -= np.log(np.exp(logprobs).sum())
    if 0 < state.top_p < 1:
        ordered = np.sort(logprobs)
        probs = np.exp(ordered)
        mass_above = probs.sum() - np.cumsum(probs)  # of the tokens ranked above each one
        dropped = int(np.count_nonzero(mass_above >= state.top_p * probs.sum()))
        logprobs[logprobs < ordered[min(dropped, len(ordered) - 1)]] = -np.inf
    weights = np.exp((logprobs - logprobs.max()) / np.float32(state.temperature))
    cumulative = np.cumsum(weights, dtype=np.float64)
    drawn = np.searchsorted(cumulative, state.rng.random() * cumulative[-1], side="right")
    return int(min(drawn, len(cumulative) - 1))


def next_token(logits: F32, state: SamplingState) -> int:
    """Sample one token; the request's constraint, if any, masks the logits first."""
    if state.constraint is not None:
        state.constraint.mask(logits)
    token = sample(logits, state)
    if state.constraint is not None:
        state.constraint.advance(token)
    return token


class CpuBackend:
    """Loads mlx-lm Llama model directories into the numpy forward pass."""

    name = "cpu"

    def __init__(
        self,
        *,
        max_batch: int = 8,
        prompt_cache_entries: int = 16,
        constraints: ConstraintFactory | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.prompt_cache_entries = prompt_cache_entries
        self.constraints = constraints

    @property
    def device(self) -> str:
        return "cpu"

    def inspect(self, path: Path) -> ModelFacts:
        facts = check_model_directory(path)
        config = _config(path)  # an architecture this backend cannot run fails here
        resident = _float32_bytes(path, config)
        # The memory budget must see what loading takes: packed weights unpack to float32.
        return replace(facts, parameters=resident // 4, size_bytes=resident)

    def load(self, path: Path) -> CpuModel:
        self.inspect(path)
        config = _config(path)
        try:
            model = load_llama(path, config)
            # What mlx-lm's own `load` does, so the chat template, eos ids and streaming
            # detokenizer are those of the mlx backend (the function is untyped upstream).
            eos = load_config(path).get("eos_token_id", None)
            tokenizer = load_tokenizer(path, eos_token_ids=eos)  # type: ignore[no-untyped-call]
        except AgentmeshError:
            raise
        except Exception as exc:  # transformers raises plain ValueError/OSError on bad files
            raise FailedPrecondition(
                f"{path} could not be loaded: {exc}", reason="MODEL_INVALID"
            ) from exc
        # JSON schemas by default: the grammar needs this model's own tokenizer.
        constraints = (
            self.constraints
            or ConstraintCompiler(
                tokenizer._tokenizer, config.vocab_size, tokenizer.eos_token_ids
            ).for_request
        )
        return CpuModel(
            model,
            tokenizer,
            name=path.name,
            max_batch=self.max_batch,
            prompt_cache_entries=self.prompt_cache_entries,
            constraints=constraints,
        )


def _config(path: Path) -> LlamaConfig:
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"{path} is not a valid model: {exc}") from exc
    return LlamaConfig.parse(raw, str(path))


def _float32_bytes(path: Path, config: LlamaConfig) -> int:
    """Bytes of the weights once loaded, from the safetensors headers alone."""
    total = 0
    for weights in path.glob("*.safetensors"):
        header, _ = read_safetensors_header(weights)
        for name, entry in header.items():
            module, _, kind = name.rpartition(".")
            if kind in ("scales", "biases"):
                continue
            spec = config.quant_for(module) if f"{module}.scales" in header else None
            total += 4 * math.prod(entry["shape"]) * (32 // spec.bits if spec else 1)
    return total


@dataclass
class _Entry:
    tokens: npt.NDArray[np.int64]
    cache: KVCache
    key: str


class _PrefixCache:
    """KV caches of recently finished sequences, least recently used dropped first.

    Entries are never handed out, only copied from, so any number of requests may reuse
    one entry at the same time.
    """

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._anonymous = itertools.count()

    def reuse(self, key: str, prompt: list[int], config: LlamaConfig) -> tuple[KVCache, int]:
        """A fresh cache holding the longest cached prefix of ``prompt`` (never all of it:
        the last prompt token must run to give the first logits) and that prefix's length."""
        wanted = np.asarray(prompt, dtype=np.int64)
        best: tuple[int, bool, str] = (0, False, "")
        for name, entry in self._items.items():
            common = _common_prefix(entry.tokens, wanted)
            best = max(best, (common, bool(key) and entry.key == key, name))
        common, _, name = best
        common = min(common, len(prompt) - 1)
        if common <= 0:
            return KVCache(config), 0
        self._items.move_to_end(name)
        return self._items[name].cache.prefix(common, config, room=len(prompt) - common), common

    def put(self, key: str, tokens: list[int], cache: KVCache) -> None:
        if self.entries <= 0 or cache.length == 0:
            return
        stored = np.asarray(tokens[: cache.length], dtype=np.int64)
        # An unkeyed entry this one extends holds nothing more: drop it instead of the LRU.
        for name, entry in list(self._items.items()):
            if not entry.key and _common_prefix(entry.tokens, stored) == len(entry.tokens):
                del self._items[name]
        name = key or f"\0{next(self._anonymous)}"
        self._items[name] = _Entry(stored, cache, key)
        self._items.move_to_end(name)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)


def _common_prefix(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass
class _Sequence:
    """A request in progress on the owner thread."""

    job: Job
    prompt: list[int]
    cached: int
    cache: KVCache
    output: Output
    sampling: SamplingState
    began: float
    pending: list[int]  # tokens to feed next: the rest of the prompt, then the last sampled
    generated: list[int] = field(default_factory=list)
    first_token_at: float | None = None

    @property
    def prefilling(self) -> bool:
        return not self.generated


class CpuModel:
    """A loaded model, its tokenizer and its prompt cache; used from the owner thread."""

    def __init__(
        self,
        model: LlamaModel,
        tokenizer: Any,
        *,
        name: str,
        max_batch: int,
        prompt_cache_entries: int,
        constraints: ConstraintFactory | None = None,
    ) -> None:
        self._model: LlamaModel | None = model
        self._config = model.config
        self._tokenizer = tokenizer
        self._name = name
        self._max_batch = max(1, max_batch)
        self._cache = _PrefixCache(prompt_cache_entries)
        self._constraints = constraints
        self._eos = set(int(t) for t in tokenizer.eos_token_ids)
        self.prompt_cache_hits = 0

    def serve(self, inbox: Inbox) -> None:
        running: list[_Sequence] = []
        while True:
            if not running:
                job = inbox.take()
                if job is None:
                    return
                self._admit(job, running)
            while len(running) < self._max_batch and (job := inbox.take_nowait()) is not None:
                self._admit(job, running)
            running[:] = [s for s in running if not s.job.cancelled]
            if running:
                self._step(running)

    def close(self) -> None:
        self._cache = _PrefixCache(0)
        self._model = None

    def _admit(self, job: Job, running: list[_Sequence]) -> None:
        request = job.request
        try:
            prompt = render_prompt(self._tokenizer, request, self._name)
            constraint = self._constraints(request) if self._constraints else None
        except AgentmeshError as exc:
            job.fail(exc)
            return
        except Exception as exc:  # a constraint library failure fails this request only
            job.fail(generation_failed(exc))
            return
        if not prompt:
            job.fail(InvalidArgument("the chat template rendered an empty prompt"))
            return
        cache, cached = self._cache.reuse(request.cache_key, prompt, self._config)
        if cached:
            self.prompt_cache_hits += 1
        config = request.config
        if running:
            _logger.debug(
                "request joins a running batch",
                extra={"model": self._name, "running": len(running)},
            )
        running.append(
            _Sequence(
                job=job,
                prompt=prompt,
                cached=cached,
                cache=cache,
                output=Output(job, self._tokenizer.detokenizer, config.stop),
                sampling=SamplingState(
                    temperature=config.temperature,
                    top_p=config.top_p,
                    repetition_penalty=config.repetition_penalty,
                    presence_penalty=config.presence_penalty,
                    frequency_penalty=config.frequency_penalty,
                    rng=np.random.default_rng(config.seed),
                    history=list(prompt),
                    constraint=constraint,
                ),
                began=time.monotonic(),
                pending=prompt[cached:],
            )
        )

    def _step(self, running: list[_Sequence]) -> None:
        """One forward pass: every decoding sequence's next token and a budget of prompt
        tokens; then sample for each sequence whose prompt is done."""
        assert self._model is not None
        segments: list[Segment] = []
        fed: list[_Sequence] = []
        budget = _PREFILL_TOKENS_PER_STEP
        for seq in running:
            if not seq.prefilling:
                segments.append(Segment(seq.cache, seq.pending))
                seq.pending = []
            elif budget > 0:
                chunk, seq.pending = seq.pending[:budget], seq.pending[budget:]
                budget -= len(chunk)
                segments.append(Segment(seq.cache, chunk, logits=not seq.pending))
            else:
                continue
            fed.append(seq)
        try:
            logits = self._model.forward(segments)
        except Exception as exc:
            for seq in running:
                seq.job.fail(generation_failed(exc))
            running.clear()
            return
        now = time.monotonic()
        sampled = [seq for seq, segment in zip(fed, segments, strict=True) if segment.logits]
        done: list[_Sequence] = []
        for seq, row in zip(sampled, logits, strict=True):
            seq.first_token_at = seq.first_token_at or now
            try:
                reason = self._advance(seq, row)
            except AgentmeshError as exc:  # e.g. a constraint that lost its grammar
                seq.job.fail(exc)
                done.append(seq)
                continue
            except Exception as exc:
                seq.job.fail(generation_failed(exc))
                done.append(seq)
                continue
            if reason is not None:
                self._complete(seq, reason)
                done.append(seq)
        if done:
            running[:] = [s for s in running if s not in done]

    def _advance(self, seq: _Sequence, logits: F32) -> FinishReason | None:
        """Sample and stream ``seq``'s next token; why it ends, if it does."""
        token = next_token(logits, seq.sampling)
        seq.generated.append(token)
        seq.sampling.history.append(token)
        constraint = seq.sampling.constraint
        if token in self._eos or seq.output.add(token):
            return FinishReason.STOP
        if constraint is not None and constraint.finished:
            return FinishReason.STOP
        if len(seq.generated) >= seq.job.request.config.max_tokens:
            return FinishReason.LENGTH
        seq.pending = [token]
        return None

    def _complete(self, seq: _Sequence, reason: FinishReason) -> None:
        if seq.output.final_text is None:
            seq.output.flush()
        # The cache covers the prompt and every generated token but the last (never fed).
        self._cache.put(seq.job.request.cache_key, seq.prompt + seq.generated, seq.cache)
        seq.job.finish(
            finished_event(
                seq.job,
                reason,
                model=self._name,
                text=seq.output.text,
                prompt_tokens=len(seq.prompt),
                completion_tokens=len(seq.generated),
                cached_prompt_tokens=seq.cached,
                began=seq.began,
                first_token_at=seq.first_token_at,
            )
        )
