"""Token budgets charged per model call: reserved before the call starts, settled after.

Checking a budget only between turns (or only when an RPC starts) lets one call, or one long
session, run far past it. Instead every model call first reserves what it may spend: its
prompt (estimated with the shared token estimator) plus its `max_tokens`.

- The session's `max_total_tokens`: the call's `max_tokens` is capped to what is left of the
  budget after what is already spent and what calls in flight reserved; when less than
  `min_call_tokens` would be left for the answer, no call starts and the session ends with
  its budget reason (`token_budget`).
- The tenant's tokens per minute (`TenantTokens`, the edge's limiter): the call waits until
  the tenant's bucket holds its reservation, so a long-running session is throttled to the
  tenant's rate; the deadline and cancellation of the session still apply while it waits.

After the call the reservation is settled with the usage the call reported (the unused part
is given back; nothing is charged for a call that produced no answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agentmesh.common.v1 import generation_pb2, messages_pb2, tools_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_common.tokens import MESSAGE_OVERHEAD, REPLY_PRIMER, count_text

from .termination import Stop, Terminated

if TYPE_CHECKING:
    from .turns import UsageMeter

# A call whose config leaves max_tokens unset reserves this much for its answer.
UNSET_MAX_TOKENS = 1024


class TenantTokens(Protocol):
    """Port: the tenant's tokens-per-minute limiter (`edge.RateLimiter`)."""

    async def reserve_tokens(self, tenant: str, tokens: int) -> int:
        """Wait until the tenant may spend `tokens`, take them, and return what was taken."""

    def settle_tokens(self, tenant: str, reserved: int, used: int) -> None:
        """Give back what a call reserved but did not use (or charge what it used beyond)."""


@dataclass(frozen=True)
class Reservation:
    """What one model call holds until it is settled."""

    session_tokens: int
    tenant_tokens: int


def estimate_prompt(
    messages: Sequence[messages_pb2.Message], tools: Sequence[tools_pb2.ToolSpec]
) -> int:
    """The prompt tokens of a call, as the gateway's estimator counts them."""
    total = REPLY_PRIMER
    for message in messages:
        total += MESSAGE_OVERHEAD + count_text(message.content) + count_text(message.name)
        for call in message.tool_calls:
            total += count_text(call.name) + count_text(str(call.arguments))
    for spec in tools:
        total += count_text(spec.name) + count_text(spec.description)
        total += count_text(str(spec.parameters_schema))
    return total


class CallBudget:
    """Reserves and settles the tokens of one session's model calls."""

    def __init__(
        self,
        *,
        tenant: str,
        meter: UsageMeter,
        max_total_tokens: int = 0,
        tenant_tokens: TenantTokens | None = None,
        min_call_tokens: int = 16,
    ) -> None:
        self._tenant = tenant
        self._meter = meter
        self.max_total_tokens = max_total_tokens
        self._tenant_tokens = tenant_tokens
        self._min_call_tokens = min_call_tokens
        self._in_flight = 0  # session tokens reserved by calls not yet settled
        self._settled = asyncio.Event()  # replaced on every settlement

    async def reserve(self, request: inference_pb2.GenerateRequest) -> Reservation:
        """Reserve the call's tokens, capping `request.config.max_tokens` to the session's
        budget; raise `Terminated` (token_budget) when too little is left for a call."""
        prompt = estimate_prompt(request.messages, request.tools)
        answer = request.config.max_tokens or UNSET_MAX_TOKENS
        if self.max_total_tokens > 0:
            answer = min(answer, await self._room_for_answer(prompt))
            request.config.max_tokens = answer
        session_tokens = prompt + answer
        self._in_flight += session_tokens
        try:
            tenant_tokens = (
                await self._tenant_tokens.reserve_tokens(self._tenant, session_tokens)
                if self._tenant_tokens is not None
                else 0
            )
        except BaseException:
            self._in_flight -= session_tokens
            raise
        return Reservation(session_tokens=session_tokens, tenant_tokens=tenant_tokens)

    async def _room_for_answer(self, prompt: int) -> int:
        """What the session's budget leaves for a call's answer after its prompt, waiting for
        calls in flight (parallel tasks or stages) to give back what they did not use."""
        while True:
            left = self.max_total_tokens - self._meter.total.total_tokens - self._in_flight
            if left - prompt >= self._min_call_tokens:
                return left - prompt
            if self._in_flight == 0:
                raise Terminated(Stop("token_budget"))
            await self._settled.wait()

    def settle(self, reservation: Reservation, used: int) -> None:
        """Release `reservation`; `used` is what the call spent (already on the meter)."""
        self._in_flight -= reservation.session_tokens
        settled, self._settled = self._settled, asyncio.Event()
        settled.set()
        if self._tenant_tokens is not None and reservation.tenant_tokens:
            self._tenant_tokens.settle_tokens(self._tenant, reservation.tenant_tokens, used)

    async def metered(
        self, stream: AsyncIterator[generation_pb2.GenerateEvent], reservation: Reservation
    ) -> AsyncIterator[generation_pb2.GenerateEvent]:
        """Relay a call's events; settle `reservation` with its usage once it ends."""
        used = 0
        try:
            async for event in stream:
                if event.WhichOneof("event") == "finished":
                    used = event.finished.usage.total_tokens
                yield event
        finally:
            self.settle(reservation, used)
            close = getattr(stream, "aclose", None)
            if close is not None:  # the caller stops at `finished`: end the call's stream now
                await close()
