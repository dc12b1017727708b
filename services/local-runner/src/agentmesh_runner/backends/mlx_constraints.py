"""A :class:`JsonConstraint` as an mlx-lm logits processor.

mlx-lm computes the logits of step n+1 before it hands token n to the caller (the next step
is queued while the caller reads), so the processor cannot wait for the caller to record
token n: it records it itself, from the token context it is given. Both sides record by
count, so a token is consumed exactly once whoever sees it first; after a stream moves into a
batch, :meth:`ConstraintProcessor.restart` says how many tokens were generated before.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from agentmesh_runner.constraints import JsonConstraint

__all__ = ["ConstraintProcessor"]


class ConstraintProcessor:
    """Masks the logits of one sequence so that it stays inside its grammar."""

    def __init__(self, constraint: JsonConstraint) -> None:
        self.constraint = constraint
        self._generated_at_start = 0
        self._calls = 0

    def restart(self, generated: int) -> None:
        """The sequence continues in another generator after ``generated`` tokens."""
        self._generated_at_start = generated
        self._calls = 0

    def record(self, generated: int, token: int) -> None:
        """Token number ``generated`` (1-based) is ``token``; consumed unless it was already."""
        if self.constraint.tokens < generated:
            self.constraint.advance(token)

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        # The first call of a generator yields the first token after what it was given;
        # each later call follows one more sampled token, the last of the context.
        if self._calls > 0:
            self.record(self._generated_at_start + self._calls, int(np.asarray(context[-1])))
        self._calls += 1
        allowed = self.constraint.allowed()
        width = logits.shape[-1]
        if len(allowed) < width:
            allowed = np.concatenate([allowed, np.zeros(width - len(allowed), np.bool_)])
        mask = mx.array(allowed[:width])
        return mx.where(mask, logits, mx.array(-np.inf, dtype=logits.dtype))
