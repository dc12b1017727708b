"""Token-level constrained decoding: local answers that always match a JSON schema.

llguidance compiles the schema into a grammar; before each token it computes which tokens
keep the answer a valid prefix, and every other token's logit becomes -inf, so whatever the
sampler picks, the text parses. Chosen over xgrammar (needs torch) and outlines-core (builds
an index over the whole vocabulary per schema, seconds for 49k tokens) because its per-token
mask costs ~0.1-0.5 ms here (bench/runner) and a new schema compiles in about a millisecond.

Backends call, per generated token: :meth:`JsonConstraint.mask` on the logits, sample, then
:meth:`JsonConstraint.advance`; :attr:`JsonConstraint.finished` says the value is complete
(nothing but end-of-sequence could follow), so generation ends with STOP.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np
import numpy.typing as npt

from agentmesh_common import Internal
from agentmesh_runner.domain import GenerationRequest
from agentmesh_runner.tool_calls import JSON_LAYOUT, supports_tool_calls, tool_call_grammar

if TYPE_CHECKING:  # declared by llguidance's stub only, not at run time
    from llguidance._lib import JsonCompileOptions

__all__ = ["ConstraintCompiler", "JsonConstraint", "compile_options", "schema_problem"]

_OPTIONS = cast("JsonCompileOptions", JSON_LAYOUT)


def compile_options() -> JsonCompileOptions:
    return _OPTIONS.copy()


def _grammar(schema_json: str) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=compile_options())


def schema_problem(schema_json: str) -> str | None:
    """Why ``schema_json`` cannot constrain decoding, or None if it can."""
    try:
        schema: Any = json.loads(schema_json)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(schema, dict):
        return "must be a JSON object"
    try:
        problem = llguidance.LLMatcher.validate_grammar(_grammar(schema_json))
    except ValueError as exc:
        return str(exc)
    return problem or None


class JsonConstraint:
    """The grammar state of one answer; used from the model's owner thread only."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._bitmask = llg_numpy.allocate_token_bitmask(1, vocab_size)
        self.tokens = 0

    @property
    def finished(self) -> bool:
        """The value is complete: only end-of-sequence could follow."""
        return bool(self._matcher.is_stopped())

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Which tokens may come next, as a boolean vector over the vocabulary."""
        llg_numpy.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        return bits[: self._vocab_size].astype(np.bool_)

    def mask(self, logits: npt.NDArray[np.floating[Any]]) -> None:
        """Set the logits of every token that would break the grammar to -inf, in place."""
        allowed = self.allowed()
        width = min(len(logits), len(allowed))
        logits[:width][~allowed[:width]] = -np.inf
        logits[width:] = -np.inf

    def advance(self, token: int) -> None:
        """Record the sampled ``token``; it must be one :meth:`mask` allowed."""
        if not self._matcher.consume_token(token) or self._matcher.is_error():
            raise Internal(
                f"constrained decoding lost its grammar: {self._matcher.get_error()}",
                reason="CONSTRAINT_FAILED",
            )
        self.tokens += 1


class ConstraintCompiler:
    """Builds :class:`JsonConstraint` s for one model's tokenizer.

    Wrapping the tokenizer for llguidance costs about half a second, so it happens once per
    loaded model, on the first constrained request.
    """

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._vocab_size = vocab_size
        self._eos_ids = sorted(set(eos_ids))
        self._tool_calls = supports_tool_calls(getattr(hf_tokenizer, "chat_template", None))
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _wrapped(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._vocab_size, eos_token=self._eos_ids
                )
            return self._tokenizer

    def for_request(self, request: GenerationRequest) -> JsonConstraint | None:
        """The constraint ``request`` asks for, if any: its response schema, else, with
        tools offered to a template that knows ``<tool_call>``, text or a valid call."""
        schema_json = request.config.response_schema_json
        if schema_json is not None:
            return self.json(schema_json)
        if request.tools and self._tool_calls:
            return self._constraint(
                llguidance.LLMatcher.grammar_from_lark(tool_call_grammar(request.tools))
            )
        return None

    def json(self, schema_json: str) -> JsonConstraint:
        """A fresh constraint for one answer matching ``schema_json`` (validated before)."""
        return self._constraint(_grammar(schema_json))

    def _constraint(self, grammar: str) -> JsonConstraint:
        matcher = llguidance.LLMatcher(self._wrapped(), grammar, log_level=0)
        if matcher.is_error():
            raise Internal(
                f"the constraint did not compile: {matcher.get_error()}",
                reason="CONSTRAINT_FAILED",
            )
        return JsonConstraint(matcher, self._vocab_size)
