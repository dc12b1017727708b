"""One model call of a turn: the usage ledger first, else the gateway's stream, recorded.

Each call has an idempotency key. A call the ledger holds as succeeded (a replica died after
it) is not repeated: its recorded answer is used instead (`CallResult.reused`).

What is durable together: the call's ledger row is staged the moment its `finished` event
arrives (the stream is closed then, without waiting for its end), and the caller queues the
call's next event (`message_completed`, or the first tool call) with no `await` in between.
The recorder stores everything queued so far in each commit, so one commit stores the row
and that event, or neither. Hence:

- a succeeded row in the ledger means the call's next event is in the log already: a turn
  that reuses the answer must not emit it again;
- no row means no `finished` was stored: the call is made again (a kill in the one commit
  that carries the call's end is the only way a finished call is bought twice).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.rpc import code_pb2, status_pb2

from agentmesh.common.v1 import events_pb2, generation_pb2, messages_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common.protobuf import duration

from .events import EventRecorder
from .ports import ModelGateway, SessionStore
from .preferences import SessionScope

if TYPE_CHECKING:
    from .budget import CallBudget


class TurnFailed(Exception):
    """A model call failed for good (after the gateway's own retries and fallbacks)."""

    def __init__(self, status: status_pb2.Status, usage: generation_pb2.Usage | None = None):
        super().__init__(status.message)
        self.status = status
        # Tokens the failed call used all the same (failed attempts the gateway reported).
        self.usage = usage or generation_pb2.Usage()


@dataclass(frozen=True)
class CallResult:
    """A model call's answer."""

    finished: generation_pb2.Finished
    # Taken from the ledger: the call and its next event were stored before a takeover.
    reused: bool
    message_id: str  # the id the answer streamed under (a new one after a `restart`)


@dataclass(frozen=True)
class CallSpec:
    """Who makes a call and where it belongs."""

    agent_name: str
    agent_label: str
    task_id: str
    round: int
    key: str
    call_index: int


class ModelCaller:
    """Makes one session's model calls through the gateway, with the usage ledger."""

    def __init__(
        self,
        *,
        gateway: ModelGateway,
        store: SessionStore,
        recorder: EventRecorder,
        tenant: str,
        session: str,
        scope: SessionScope | None,
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._recorder = recorder
        self._tenant = tenant
        self._session = session
        self._scope = scope
        # Only a resumed session can meet a model call already answered (before a takeover):
        # otherwise every idempotency key is new, and asking the ledger is a wasted round trip.
        self.reuse_recorded_calls = False
        # Reserves each call's tokens against the session's and the tenant's budgets.
        self.budget: CallBudget | None = None

    async def recorded(self, key: str) -> CallResult | None:
        """The answer of the call `key` as the ledger holds it, when it succeeded before."""
        if not self.reuse_recorded_calls:
            return None
        recorded = await self._store.find_execution(self._tenant, key)
        if recorded is None or recorded.outcome != memory_pb2.EXECUTION_OUTCOME_SUCCEEDED:
            return None
        finished = generation_pb2.Finished(
            finish_reason=(
                generation_pb2.FINISH_REASON_TOOL_CALLS
                if recorded.response.tool_calls
                else generation_pb2.FINISH_REASON_STOP
            ),
            usage=recorded.usage,
            provider=recorded.provider,
            model=recorded.model,
            tool_calls=recorded.response.tool_calls,
            text=recorded.response.content,
        )
        return CallResult(finished=finished, reused=True, message_id=uuid.uuid4().hex)

    async def call(self, spec: CallSpec, request: inference_pb2.GenerateRequest) -> CallResult:
        """Make the call `request` (its idempotency key is `spec.key`), or reuse its answer."""
        reused = await self.recorded(spec.key)
        if reused is not None:
            return reused
        request.idempotency_key = spec.key
        # Reserved before the call starts: may cap max_tokens, wait for the tenant's tokens,
        # or end the session (`Terminated`) before anything of the call is recorded.
        reservation = await self.budget.reserve(request) if self.budget is not None else None
        message_id = uuid.uuid4().hex
        self._started(spec, message_id, request)
        if self._scope is not None:
            request.model_preference = self._scope.preferences.model_preference
        started = time.monotonic()
        first_token: float | None = None
        attempt = 0
        attempted_provider, attempted_model = request.provider or "unknown", request.model
        finished_event: generation_pb2.Finished | None = None
        failure: status_pb2.Status | None = None
        failed_usage = generation_pb2.Usage()
        stream = self._gateway.generate(self._tenant, request)
        if self.budget is not None and reservation is not None:
            stream = self.budget.metered(stream, reservation)
        try:
            async for event in stream:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    if first_token is None:
                        first_token = time.monotonic()
                    delta = event.delta
                    which = delta.WhichOneof("delta")
                    if which in ("text", "thinking"):
                        await self._recorder.delta(
                            agent=spec.agent_name,
                            message_id=message_id,
                            text=delta.text if which == "text" else delta.thinking,
                            thinking=which == "thinking",
                            task_id=spec.task_id,
                        )
                elif kind == "attempt_started":
                    attempt = event.attempt_started.attempt
                    attempted_provider = event.attempt_started.provider or attempted_provider
                    attempted_model = event.attempt_started.model or attempted_model
                elif kind == "restart":
                    # The gateway falls back after streaming: what was streamed under this
                    # message id is abandoned (it never completes); the answer streams under
                    # a new id.
                    message_id = uuid.uuid4().hex
                    self._started(spec, message_id, request)
                elif kind == "finished":
                    # The answer is complete: record it now, not after the stream's end (a
                    # kill meanwhile would leave the call paid for but not in the ledger).
                    finished_event = event.finished
                    break
                elif kind == "attempt_failed":
                    add_usage(failed_usage, event.attempt_failed.usage)
                    if not event.attempt_failed.will_fall_back:
                        failure = event.attempt_failed.error
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        # The last deltas, the ledger row and the turn's next event (`message_completed`, a
        # tool call or the session's failure) are stored together in one commit.
        latency = time.monotonic() - started
        execution = memory_pb2.Execution(
            session=self._session,
            agent=spec.agent_name,
            task_id=spec.task_id,
            route=request.route,
            attempt=attempt,
            idempotency_key=spec.key,
            latency=duration(latency),
            call_index=spec.call_index,
        )
        if first_token is not None:
            execution.time_to_first_token.CopyFrom(duration(first_token - started))
        if finished_event is None:
            status = failure or status_pb2.Status(
                code=code_pb2.UNAVAILABLE, message="the model stream ended without an answer"
            )
            execution.outcome = memory_pb2.EXECUTION_OUTCOME_FAILED
            execution.provider = attempted_provider
            execution.model = attempted_model
            execution.error.CopyFrom(status)
            execution.usage.CopyFrom(failed_usage)
            self._recorder.stage_execution(execution)
            raise TurnFailed(status, failed_usage)
        if failed_usage.total_tokens or failed_usage.cost_micros_usd:
            # Attempts that failed before this one (an invalid structured answer tried
            # again) used tokens too: they are billed with the answer.
            total = generation_pb2.Usage()
            add_usage(total, failed_usage)
            add_usage(total, finished_event.usage)
            finished_event.usage.CopyFrom(total)
        execution.provider = finished_event.provider
        execution.model = finished_event.model
        execution.usage.CopyFrom(finished_event.usage)
        execution.outcome = memory_pb2.EXECUTION_OUTCOME_SUCCEEDED
        execution.response.CopyFrom(
            messages_pb2.Message(
                role=messages_pb2.ROLE_ASSISTANT,
                content=finished_event.text,
                name=spec.agent_label,
                tool_calls=finished_event.tool_calls,
            )
        )
        self._recorder.stage_execution(execution)
        return CallResult(finished=finished_event, reused=False, message_id=message_id)

    def _started(
        self, spec: CallSpec, message_id: str, request: inference_pb2.GenerateRequest
    ) -> None:
        model = request.route or f"{request.provider}/{request.model}"
        self._recorder.buffer(
            events_pb2.SessionEvent(
                agent=spec.agent_name,
                task_id=spec.task_id,
                message_id=message_id,
                message_started=events_pb2.MessageStarted(model=model, round=spec.round),
            )
        )


def add_usage(total: generation_pb2.Usage, usage: generation_pb2.Usage) -> None:
    """Add `usage` to `total`."""
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.total_tokens += usage.total_tokens
    total.cached_prompt_tokens += usage.cached_prompt_tokens
    total.reasoning_tokens += usage.reasoning_tokens
    total.cost_micros_usd += usage.cost_micros_usd
    total.estimated = total.estimated or usage.estimated
