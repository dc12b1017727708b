"""One agent turn: assemble the context, stream the model, run tool calls, record it all.

A turn is a loop of model calls: each call streams text (stored as batched
`content_delta` events); when the model asks for tools, each call is checked against the
agent's `ToolBox`, run, and answered with a tool message before the model is called again.
Each model call (`model_calls`) has an idempotency key derived from the turn's key; a call
the usage ledger already holds as succeeded (a replica died after it) is not repeated: its
recorded answer is used instead, and its completion, stored with it, is not emitted again.

Nothing here waits for the store: `message_started` is buffered (stored with the first text,
or within the flush interval), the ledger row is staged, and `message_completed` is emitted,
so a turn's writes usually reach the memory service as one commit, while the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from opentelemetry import trace

from agentmesh.common.v1 import approvals_pb2, events_pb2, generation_pb2, messages_pb2, tools_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh.memory.v1 import memory_pb2

from .agents import SessionAgent
from .approvals import ApprovalGate, ApprovalRequest
from .context import ContextAssembler, PreparedContext, retrieval_events
from .events import EventRecorder
from .knowledge import CitationLog
from .lifecycle import ReplicaDraining
from .messaging import Messenger
from .model_calls import CallSpec, ModelCaller, TurnFailed, add_usage
from .observability import OrchestratorMetrics
from .ports import ModelGateway, SessionStore
from .preferences import SessionScope
from .tools import ToolBox, ToolCallContext, ToolError, struct_to_json_text

if TYPE_CHECKING:
    from .budget import CallBudget

DEFAULT_MAX_TOOL_ROUNDS = 8


@dataclass
class UsageMeter:
    """Usage billed so far in a session."""

    total: generation_pb2.Usage = field(default_factory=generation_pb2.Usage)

    def add(self, usage: generation_pb2.Usage) -> None:
        add_usage(self.total, usage)

    def snapshot(self) -> generation_pb2.Usage:
        copy = generation_pb2.Usage()
        copy.CopyFrom(self.total)
        return copy


@dataclass(frozen=True)
class Turn:
    """What one agent is asked to do."""

    agent: SessionAgent
    prompt: str
    history: Sequence[messages_pb2.Message]
    tools: ToolBox
    idempotency_key: str
    task_id: str = ""
    round: int = 0
    response_schema: struct_pb2.Struct | None = None
    remember: bool = False  # add the final answer to the session's shared conversation
    # Tools whose call ends the turn once the reply's calls ran (a handoff hands over control).
    final_tools: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TurnOutcome:
    """What a turn produced."""

    text: str
    message: messages_pb2.Message
    usage: generation_pb2.Usage
    finish_reason: generation_pb2.FinishReason.ValueType
    structured: struct_pb2.Struct | None
    new_messages: tuple[messages_pb2.Message, ...]
    idempotency_key: str
    # The answer as staged for the shared conversation (`Turn.remember`); None when not
    # remembered, or when it came from the ledger (stored with it before a takeover).
    remembered: memory_pb2.StoredMessage | None = None


class TurnRunner:
    """Runs agent turns for one session."""

    def __init__(
        self,
        *,
        gateway: ModelGateway,
        store: SessionStore,
        recorder: EventRecorder,
        meter: UsageMeter,
        tenant: str,
        session: str,
        user: str = "default",
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        metrics: OrchestratorMetrics | None = None,
        tracer: trace.Tracer | None = None,
        approvals: ApprovalGate | None = None,
        scope: SessionScope | None = None,
        context: ContextAssembler | None = None,
        messenger: Messenger | None = None,
    ) -> None:
        self.approvals = approvals
        self._user = scope.user if scope is not None else user
        self._scope = scope
        self._context = context
        self._messenger = messenger
        # Passages the session's turns retrieved, each once, in order (the final answer's
        # citations).
        self.cited = CitationLog()
        self._metrics = metrics
        self._tracer = tracer or trace.NoOpTracer()
        self._recorder = recorder
        self._meter = meter
        self._tenant = tenant
        self._session = session
        self._max_tool_rounds = max_tool_rounds
        self.draining = False  # set when the replica drains: no new turn starts
        # Stages the session's usage (set by the engine: `Runtime.save`).
        self.on_billed: Callable[[], None] | None = None
        self._calls = ModelCaller(
            gateway=gateway,
            store=store,
            recorder=recorder,
            tenant=tenant,
            session=session,
            scope=scope,
        )

    def _bill(self, usage: generation_pb2.Usage) -> None:
        """Add a call's usage to the session's, staged with the call's ledger row (no await in
        between: one commit), so the stored usage always counts exactly the stored calls."""
        self._meter.add(usage)
        if self.on_billed is not None:
            self.on_billed()

    @property
    def reuse_recorded_calls(self) -> bool:
        """True on a resumed run: answers the ledger holds are used, not asked again."""
        return self._calls.reuse_recorded_calls

    @reuse_recorded_calls.setter
    def reuse_recorded_calls(self, value: bool) -> None:
        self._calls.reuse_recorded_calls = value

    @property
    def budget(self) -> CallBudget | None:
        """Reserves each model call's tokens against the session's and the tenant's budgets."""
        return self._calls.budget

    @budget.setter
    def budget(self, value: CallBudget | None) -> None:
        self._calls.budget = value

    async def run(self, turn: Turn) -> TurnOutcome:
        """Run the turn to its final message; raise `TurnFailed` if a model call fails, and
        `ReplicaDraining` instead of starting one while the replica drains."""
        if self.draining:
            raise ReplicaDraining()
        started = time.monotonic()
        outcome = "failed"
        attributes: dict[str, str | int] = {
            "agentmesh.agent": turn.agent.name,
            "agentmesh.round": turn.round,
        }
        if turn.task_id:
            attributes["agentmesh.task"] = turn.task_id
        with self._tracer.start_as_current_span("agent.turn", attributes=attributes):
            try:
                result = await self._run(turn)
                outcome = "completed"
                return result
            except BaseException as exc:
                outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
                raise
            finally:
                if self._metrics is not None:
                    self._metrics.turns.labels(outcome).inc()
                    self._metrics.turn_seconds.observe(time.monotonic() - started)

    async def _run(self, turn: Turn) -> TurnOutcome:
        agent = turn.agent
        definition = agent.definition
        system = definition.prompts.system
        if definition.prompts.context_instructions:
            system = f"{system}\n\n{definition.prompts.context_instructions}"
        prepared = await self._prepare(turn)
        if prepared.system_notes:
            system = f"{system}\n\n{prepared.system_notes}"
        prompt = turn.prompt
        if prepared.prompt_notes:
            prompt = f"{prompt}\n\n{prepared.prompt_notes}"
        conversation: list[messages_pb2.Message] = [
            messages_pb2.Message(role=messages_pb2.ROLE_SYSTEM, content=system),
            *turn.history,
            *prepared.messages,
            messages_pb2.Message(role=messages_pb2.ROLE_USER, content=prompt),
        ]
        if prepared.retrieval is not None:  # shown as a tool call and its result
            for event in retrieval_events(turn.agent.name, turn.task_id, prepared.retrieval):
                await self._recorder.emit(event)
            self.cited.add(prepared.retrieval.citations)
        new_messages: list[messages_pb2.Message] = []
        usage = UsageMeter()
        specs = turn.tools.specs
        for call_index in range(self._max_tool_rounds + 1):
            offer_tools = specs if call_index < self._max_tool_rounds else []
            try:
                result = await self._calls.call(
                    CallSpec(
                        agent_name=agent.name,
                        agent_label=agent.label,
                        task_id=turn.task_id,
                        round=turn.round,
                        key=f"{turn.idempotency_key}/{call_index}",
                        call_index=call_index,
                    ),
                    self._request(turn, conversation, offer_tools),
                )
            except TurnFailed as failed:
                self._bill(failed.usage)  # a failed call's tokens are billed all the same
                raise
            finished = result.finished
            message_id = result.message_id
            usage.add(finished.usage)
            if not result.reused:  # a reused call's usage is in the stored session's already
                self._bill(finished.usage)
            reply = messages_pb2.Message(
                role=messages_pb2.ROLE_ASSISTANT,
                content=finished.text,
                name=agent.label,
                tool_calls=finished.tool_calls,
            )
            conversation.append(reply)
            new_messages.append(reply)
            # A call of a final tool (a handoff) ends the turn with this reply, once it ran.
            final = any(call.name in turn.final_tools for call in finished.tool_calls)
            ends_turn = final or not finished.tool_calls or call_index == self._max_tool_rounds
            remembered = None
            if ends_turn and turn.remember and not result.reused:
                # Staged with the ledger row (no await in between: one commit), so on resume
                # an answer taken from the ledger is known to be in the conversation already.
                remembered = memory_pb2.StoredMessage(
                    message=reply,
                    agent=agent.name,
                    round=turn.round,
                    prompt_tokens=usage.total.prompt_tokens,
                    completion_tokens=usage.total.completion_tokens,
                )
                self._recorder.stage_messages([remembered])
            if finished.tool_calls and (final or not ends_turn):
                for position, call in enumerate(finished.tool_calls):
                    key = f"{turn.idempotency_key}/{call_index}/{position}"
                    answer = await self._run_tool(turn, call, message_id, key)
                    conversation.append(answer)
                    new_messages.append(answer)
            if ends_turn:
                # A reused answer's completion is in the log already when nothing ran between
                # its ledger row and it (model_calls: one commit); emitting it again would
                # complete a message twice. A final tool's turn completes after its tools ran.
                if not result.reused or final:
                    await self._recorder.emit(
                        events_pb2.SessionEvent(
                            agent=agent.name,
                            task_id=turn.task_id,
                            message_id=message_id,
                            message_completed=events_pb2.MessageCompleted(
                                message=reply,
                                usage=usage.snapshot(),
                                finish_reason=finished.finish_reason,
                                provider=finished.provider,
                            ),
                        )
                    )
                return TurnOutcome(
                    text=finished.text,
                    message=reply,
                    usage=usage.snapshot(),
                    finish_reason=finished.finish_reason,
                    structured=(
                        finished.structured_output
                        if finished.HasField("structured_output")
                        else None
                    ),
                    new_messages=tuple(new_messages),
                    idempotency_key=turn.idempotency_key,
                    remembered=remembered,
                )
        raise AssertionError("unreachable: the last model call is offered no tools")

    def _request(
        self,
        turn: Turn,
        conversation: Sequence[messages_pb2.Message],
        tools: Sequence[tools_pb2.ToolSpec],
    ) -> inference_pb2.GenerateRequest:
        model = turn.agent.definition.model
        request = inference_pb2.GenerateRequest(
            route=model.route,
            provider=model.provider,
            model=model.model,
            messages=conversation,
            tools=tools,
            config=turn.agent.definition.generation,
            session=self._session,
            agent=turn.agent.name,
        )
        if turn.response_schema is not None:
            request.config.response_schema.CopyFrom(turn.response_schema)
        return request

    async def _prepare(self, turn: Turn) -> PreparedContext:
        """The turn's extra context: recalled memories, addressed messages, passages."""
        if self._context is None or self._scope is None:
            return PreparedContext()
        if self._scope.messaging and self._recorder.messages_unstored:
            await self._recorder.flush()  # the inbox read must see messages sent just now
        return await self._context.prepare(self._scope, turn.agent, turn.prompt)

    async def _run_tool(
        self, turn: Turn, call: messages_pb2.ToolCall, message_id: str, key: str
    ) -> messages_pb2.Message:
        agent = turn.agent
        await self._recorder.emit(
            events_pb2.SessionEvent(
                agent=agent.name,
                task_id=turn.task_id,
                message_id=message_id,
                tool_call=events_pb2.ToolCallEvent(call=call),
            )
        )
        result_event = events_pb2.ToolResult(tool_call_id=call.id, tool_name=call.name)
        context = ToolCallContext(
            tenant=self._tenant,
            session=self._session,
            agent=agent.name,
            tool_call_id=call.id,
            user=self._user,
            scope=self._scope,
            messenger=self._messenger,
        )
        try:
            if self.approvals is not None and turn.tools.needs_approval(call.name):
                await self._approved(turn, call, key)
            result = await turn.tools.call(context, call)
            result_event.result.CopyFrom(result)
            cited = turn.tools.citations(call.name, result)
            result_event.citations.extend(cited)
            self.cited.add(cited)
            content = struct_to_json_text(result)
            if self._metrics is not None:
                self._metrics.tool_calls.labels(call.name, "ok").inc()
        except ToolError as exc:
            if self._metrics is not None:
                self._metrics.tool_calls.labels(call.name, exc.code).inc()
            result_event.error.CopyFrom(
                status_pb2.Status(code=code_pb2.Code.Value(exc.code), message=exc.message)
            )
            content = json.dumps({"error": {"code": exc.code, "message": exc.message}})
        await self._recorder.emit(
            events_pb2.SessionEvent(
                agent=agent.name,
                task_id=turn.task_id,
                message_id=message_id,
                tool_result=result_event,
            )
        )
        return messages_pb2.Message(
            role=messages_pb2.ROLE_TOOL, content=content, name=call.name, tool_call_id=call.id
        )

    async def _approved(self, turn: Turn, call: messages_pb2.ToolCall, key: str) -> None:
        """Wait for a human's approval of `call`; raise `ToolError` unless it is approved."""
        assert self.approvals is not None
        approval = await self.approvals.decide(
            ApprovalRequest(
                key=key,
                agent=turn.agent.name,
                call=call,
                permission=turn.tools.permission(call.name),
                task_id=turn.task_id,
            )
        )
        if approval.state == approvals_pb2.APPROVAL_STATE_APPROVED:
            return
        if approval.state == approvals_pb2.APPROVAL_STATE_EXPIRED:
            raise ToolError("DEADLINE_EXCEEDED", approval.comment or "nobody approved the call")
        reason = f": {approval.comment}" if approval.comment else ""
        raise ToolError("PERMISSION_DENIED", f"a reviewer rejected the call{reason}")


__all__ = ["Turn", "TurnFailed", "TurnOutcome", "TurnRunner", "UsageMeter"]
