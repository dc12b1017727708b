"""The ``mlx`` backend: mlx-lm models on Apple silicon (Metal) or Linux CPU.

Scheduling on the owner thread: a request that finds the model idle runs alone through
``generate_step`` (the fastest path for one stream); when two or more requests are waiting,
they run together through mlx-lm's ``BatchGenerator`` and later arrivals join that batch
until it drains. bench/runner measured both for 8 concurrent streams and keeps this mix.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm import load as mlx_load
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from agentmesh_common import AgentmeshError, FailedPrecondition
from agentmesh_runner.constraints import ConstraintCompiler
from agentmesh_runner.domain import FinishReason, GenerationFinished, ModelFacts

from .base import Inbox, Job
from .common import (
    Output,
    check_model_directory,
    finished_event,
    generation_failed,
    render_prompt,
)
from .mlx_constraints import ConstraintProcessor

__all__ = ["MlxBackend", "MlxModel"]

_logger = logging.getLogger("agentmesh.runner.mlx")


class MlxBackend:
    """Loads mlx-lm models from local directories."""

    name = "mlx"

    def __init__(self, *, max_batch: int = 8, prompt_cache_entries: int = 16) -> None:
        self.max_batch = max_batch
        self.prompt_cache_entries = prompt_cache_entries

    @property
    def device(self) -> str:
        return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"

    def inspect(self, path: Path) -> ModelFacts:
        return check_model_directory(path)

    def load(self, path: Path) -> MlxModel:
        self.inspect(path)
        try:
            loaded = mlx_load(str(path))
            model, tokenizer = loaded[0], loaded[1]
            vocab_size = int(json.loads((path / "config.json").read_text())["vocab_size"])
        except Exception as exc:  # mlx-lm raises plain ValueError/KeyError on bad models
            raise FailedPrecondition(
                f"{path} could not be loaded: {exc}", reason="MODEL_INVALID"
            ) from exc
        return MlxModel(
            model,
            tokenizer,
            ConstraintCompiler(tokenizer._tokenizer, vocab_size, tokenizer.eos_token_ids),
            name=path.name,
            max_batch=self.max_batch,
            prompt_cache_entries=self.prompt_cache_entries,
        )


@dataclass
class _CachedPrompt:
    tokens: list[int]
    cache: list[Any]
    key: str


class _PromptCache:
    """KV caches of recently finished requests, least recently used dropped first.

    A request starts from a copy of the entry sharing the longest prefix with its prompt
    (its own ``cache_key``'s first on a tie), as mlx_lm.server does across requests, so a
    repeated system prompt or conversation is not computed again. Entries are only ever
    copied, so concurrent requests may start from one entry.
    """

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[str, _CachedPrompt] = OrderedDict()
        self._anonymous = itertools.count()

    def take(self, key: str, prompt: list[int]) -> tuple[list[Any] | None, int]:
        """A cache holding the longest reusable prefix of ``prompt`` and its length.

        At least one prompt token is always left to process (it yields the first logits).
        """
        best: tuple[int, bool, str] = (0, False, "")
        for name, entry in self._items.items():
            if can_trim_prompt_cache(entry.cache):
                common = _common_prefix(entry.tokens, prompt)
                best = max(best, (common, bool(key) and entry.key == key, name))
        common, _, name = best
        common = min(common, len(prompt) - 1)
        if common <= 0:
            return None, 0
        self._items.move_to_end(name)
        cache = copy.deepcopy(self._items[name].cache)
        trim_prompt_cache(cache, cache[0].offset - common)
        return cache, common

    def put(self, key: str, tokens: list[int], cache: list[Any]) -> None:
        if self.entries <= 0 or not cache:
            return
        offset = int(cache[0].offset)
        if offset > len(tokens):
            if not can_trim_prompt_cache(cache):
                return
            trim_prompt_cache(cache, offset - len(tokens))
            offset = len(tokens)
        stored = list(tokens[:offset])
        # An unkeyed entry this one extends holds nothing more: drop it instead of the LRU.
        for name, entry in list(self._items.items()):
            if not entry.key and _common_prefix(entry.tokens, stored) == len(entry.tokens):
                del self._items[name]
        name = key or f"\0{next(self._anonymous)}"
        self._items[name] = _CachedPrompt(stored, cache, key)
        self._items.move_to_end(name)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)


def _common_prefix(a: list[int], b: list[int]) -> int:
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


@dataclass
class _Running:
    """A job in progress on the owner thread."""

    job: Job
    prompt: list[int]
    cached: int
    cache: list[Any] | None
    output: Output
    began: float
    sampler: Any
    processors: list[Any]
    constraint: ConstraintProcessor | None = None
    generated: list[int] = field(default_factory=list)
    first_token_at: float | None = None

    def grammar_complete(self) -> bool:
        """The constrained answer is a complete value (after the last generated token)."""
        if self.constraint is None:
            return False
        self.constraint.record(len(self.generated), self.generated[-1])
        return self.constraint.constraint.finished

    def finished(self, reason: FinishReason, model: str) -> GenerationFinished:
        return finished_event(
            self.job,
            reason,
            model=model,
            text=self.output.text,
            prompt_tokens=len(self.prompt),
            completion_tokens=len(self.generated),
            cached_prompt_tokens=self.cached,
            began=self.began,
            first_token_at=self.first_token_at,
        )


class MlxModel:
    """A loaded mlx-lm model and its prompt cache; every method runs on the owner thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        constraints: ConstraintCompiler,
        *,
        name: str,
        max_batch: int,
        prompt_cache_entries: int,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._constraints = constraints
        self._name = name
        self._max_batch = max(1, max_batch)
        self._cache = _PromptCache(prompt_cache_entries)
        self._eos = set(int(t) for t in tokenizer.eos_token_ids)
        self.prompt_cache_hits = 0

    # -- scheduling ---------------------------------------------------------------------

    def serve(self, inbox: Inbox) -> None:
        while (job := inbox.take()) is not None:
            running = self._begin(job)
            if running is None:
                continue
            if self._max_batch > 1 and len(inbox) > 0:
                self._run_batch(running, inbox)
            elif (handed_over := self._run_alone(running, inbox)) is not None:
                self._run_batch(handed_over, inbox)

    def close(self) -> None:
        self._cache = _PromptCache(0)
        self._model = None
        mx.clear_cache()

    # -- request preparation ------------------------------------------------------------

    def _begin(self, job: Job) -> _Running | None:
        request = job.request
        try:
            prompt = render_prompt(self._tokenizer, request, self._name)
            constraint = self._constraints.for_request(request)
        except AgentmeshError as exc:
            job.fail(exc)
            return None
        except Exception as exc:  # a constraint library failure fails this request only
            job.fail(generation_failed(exc))
            return None
        cache, cached = self._cache.take(request.cache_key, prompt)
        if cached:
            self.prompt_cache_hits += 1
        config = request.config
        if config.seed is not None:
            mx.random.seed(config.seed)
        processors = make_logits_processors(
            repetition_penalty=config.repetition_penalty,
            presence_penalty=config.presence_penalty,
            frequency_penalty=config.frequency_penalty,
        )
        processor = ConstraintProcessor(constraint) if constraint is not None else None
        return _Running(
            job=job,
            prompt=prompt,
            cached=cached,
            cache=cache,
            output=Output(job, self._tokenizer.detokenizer, config.stop),
            began=time.monotonic(),
            sampler=make_sampler(temp=config.temperature, top_p=config.top_p),
            # The grammar masks last, after the penalties reshaped the logits.
            processors=[*processors, processor] if processor is not None else processors,
            constraint=processor,
        )

    # -- one request alone --------------------------------------------------------------

    def _run_alone(self, running: _Running, inbox: Inbox) -> _Running | None:
        """Generate for one request; hand it back mid-way if others start waiting (they
        then continue together in a batch)."""
        job = running.job
        if running.cache is None:
            running.cache = make_prompt_cache(self._model)
        max_tokens = job.request.config.max_tokens
        reason: FinishReason | None = None
        steps = generate_step(
            mx.array(running.prompt[running.cached :]),
            self._model,
            max_tokens=-1,
            sampler=running.sampler,
            logits_processors=running.processors or None,
            prompt_cache=running.cache,
        )
        try:
            for sampled, _ in steps:
                if running.first_token_at is None:
                    running.first_token_at = time.monotonic()
                if job.cancelled:
                    return None  # nobody is listening any more
                token = int(sampled)
                running.generated.append(token)
                if token in self._eos or running.output.add(token):
                    reason = FinishReason.STOP
                    break
                if running.grammar_complete():
                    reason = FinishReason.STOP
                    break
                if len(running.generated) >= max_tokens:
                    reason = FinishReason.LENGTH
                    break
                if self._max_batch > 1 and len(inbox) > 0:
                    _logger.debug(
                        "stream joins a batch",
                        extra={"model": self._name, "generated": len(running.generated)},
                    )
                    return running
        except Exception as exc:
            job.fail(generation_failed(exc))
            return None
        finally:
            steps.close()
        if reason is None:  # the step generator ended by itself (it never does)
            return None
        self._complete(running, reason, running.cache)
        return None

    def _complete(self, running: _Running, reason: FinishReason, cache: list[Any] | None) -> None:
        if running.output.final_text is None:
            running.output.flush()
        if cache is not None:
            self._cache.put(
                running.job.request.cache_key, running.prompt + running.generated, cache
            )
        running.job.finish(running.finished(reason, self._name))

    # -- several requests together ------------------------------------------------------

    def _run_batch(self, first: _Running, inbox: Inbox) -> None:
        generator: Any = BatchGenerator(
            self._model,
            max_tokens=256,
            stop_tokens=[[t] for t in sorted(self._eos)],
            completion_batch_size=self._max_batch,
            prefill_batch_size=self._max_batch,
        )
        running: dict[int, _Running] = {}
        try:
            self._admit(generator, first, running)
            while running or len(inbox):
                while len(running) < self._max_batch and (job := inbox.take_nowait()):
                    if (item := self._begin(job)) is not None:
                        self._admit(generator, item, running)
                if running:
                    self._batch_step(generator, running)
        except Exception as exc:
            for item in running.values():
                item.job.fail(generation_failed(exc))
        finally:
            generator.close()

    def _admit(self, generator: Any, item: _Running, running: dict[int, _Running]) -> None:
        max_tokens = item.job.request.config.max_tokens
        if item.generated:
            # Handed over mid-generation: the cache holds the prompt and every generated
            # token; the last one is fed again so the batch samples the next from it.
            assert item.cache is not None
            known = item.prompt + item.generated
            trim_prompt_cache(item.cache, item.cache[0].offset - (len(known) - 1))
            tokens, history = known[-1:], known[:-1]
            max_tokens -= len(item.generated)
            if item.constraint is not None:
                item.constraint.restart(len(item.generated))
        else:
            tokens, history = item.prompt[item.cached :], item.prompt[: item.cached]
        (uid,) = generator.insert(
            [tokens],
            max_tokens=[max_tokens],
            caches=[item.cache] if item.cache is not None else None,
            all_tokens=[history],
            samplers=[item.sampler],
            logits_processors=[item.processors],
        )
        item.cache = None  # the batch owns it now
        running[uid] = item

    def _batch_step(self, generator: Any, running: dict[int, _Running]) -> None:
        _, responses = generator.next()
        stopped: list[int] = []
        now = time.monotonic()
        for response in responses:
            item = running.get(response.uid)
            if item is None:
                continue
            if item.first_token_at is None:
                item.first_token_at = now
            token = int(response.token)
            item.generated.append(token)
            if response.finish_reason == "stop":  # an end-of-sequence token
                del running[response.uid]
                self._complete(item, FinishReason.STOP, response.prompt_cache)
            elif item.output.add(token) or item.grammar_complete():
                if response.finish_reason is None:
                    stopped.append(response.uid)
                else:
                    del running[response.uid]
                    self._complete(item, FinishReason.STOP, response.prompt_cache)
            elif response.finish_reason == "length":
                del running[response.uid]
                self._complete(item, FinishReason.LENGTH, response.prompt_cache)
        cancelled = [uid for uid, item in running.items() if item.job.cancelled]
        if stopped or cancelled:
            caches = generator.remove(stopped + cancelled, return_prompt_caches=True)
            for uid in stopped:
                item = running.pop(uid)
                cache = caches.get(uid)
                self._complete(item, FinishReason.STOP, cache[0] if cache else None)
            for uid in cancelled:
                running.pop(uid)
