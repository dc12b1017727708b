"""What every strategy shares while one session runs on this replica: the `Runtime`.

A `Runtime` is opened per run (`SessionEngine.open_run`) and handed to the session's strategy.
It holds the session, its agents, the writer (`EventRecorder`), the usage meter, the turn
runner and the tools, and offers what strategies have in common: the shared conversation (read
once per run, kept up to date as turns add to it), each agent's view of it within its model's
context window, conversation turns that a user message may interrupt, lookups of members and
built-in agents, toolboxes, and idempotency keys named by what a step is (so a replica that
resumes the session derives the same keys for the same steps).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.rpc import code_pb2, status_pb2

from agentmesh.common.v1 import agents_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common.tokens import MESSAGE_OVERHEAD, count_text

from .agents import SessionAgent, prepare_agent
from .domain.agent_types import AgentKind
from .domain.templates import TemplateValues
from .events import EventRecorder
from .ports import SessionStore
from .preferences import SessionScope, builtin_model
from .termination import Never, Phase, Progress, Stop, Terminated, Termination
from .tools import Tool, ToolBox
from .turns import Turn, TurnOutcome, TurnRunner, UsageMeter

HANDOFF_TOOL_PREFIX = "transfer_to_"  # the handoff strategy's generated tools


@dataclass(frozen=True)
class EngineSettings:
    """Defaults and bounds for sessions (each overridable by the session's limits)."""

    default_route: str = "default"
    default_max_rounds: int = 3
    default_max_parallel_tasks: int = 4
    default_max_plan_tasks: int = 6  # the built-in planner is told 2 to 6 tasks
    default_max_task_retries: int = 2
    # A model call starts only if at least this many tokens of the session's budget are left
    # for its answer (after its prompt); otherwise the session ends with `token_budget`.
    min_call_tokens: int = 16
    plan_attempts: int = 3
    history_messages: int = 40
    context_window_tokens: int = 8192
    # Built-in agents (router, planner, ...) budget their prompt for this window unless their
    # model says otherwise: small enough for a small local model to keep track.
    builtin_context_window_tokens: int = 2048
    # Let the goal's shape decide the router's analysis where it is clear (domain/analysis).
    router_shortcuts: bool = True
    retry_backoff_seconds: float = 0.2
    # How long a tool call waits for a human's approval unless the session says otherwise.
    default_approval_timeout_seconds: float = 600.0


@dataclass(frozen=True)
class Limits:
    """A session's limits with defaults applied."""

    max_rounds: int
    max_total_tokens: int
    deadline: dt.datetime | None
    max_parallel_tasks: int
    max_plan_tasks: int
    max_task_retries: int
    approval_timeout_seconds: float

    @classmethod
    def of(cls, session: sessions_pb2.Session, settings: EngineSettings) -> Limits:
        limits = session.limits
        return cls(
            max_rounds=limits.max_rounds or settings.default_max_rounds,
            max_total_tokens=limits.max_total_tokens,
            deadline=(
                limits.deadline.ToDatetime(tzinfo=dt.UTC) if limits.HasField("deadline") else None
            ),
            max_parallel_tasks=limits.max_parallel_tasks or settings.default_max_parallel_tasks,
            max_plan_tasks=limits.max_plan_tasks or settings.default_max_plan_tasks,
            max_task_retries=limits.max_task_retries or settings.default_max_task_retries,
            approval_timeout_seconds=(
                limits.approval_timeout.ToTimedelta().total_seconds()
                or settings.default_approval_timeout_seconds
            ),
        )


class SessionFailure(Exception):
    """The session cannot go on; `status` says why (reaches the client in session_failed)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status_pb2.Status(code=code, message=message)


@dataclass(frozen=True)
class Ending:
    """How a strategy ended the session."""

    answer: str
    reason: str


@dataclass
class Runtime:
    """Everything a strategy needs while one session runs on this replica."""

    tenant: str
    session: sessions_pb2.Session
    agents: list[SessionAgent]
    recorder: EventRecorder
    meter: UsageMeter
    turns: TurnRunner
    limits: Limits
    settings: EngineSettings
    store: SessionStore
    inbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    cancel_reason: str = "cancel_session"
    abandoned: bool = False
    tools: Mapping[str, Tool] = field(default_factory=dict)
    current_turn: asyncio.Task[TurnOutcome] | None = None
    interrupt_requested: bool = False
    # The newest messages of the shared conversation, kept here as the run adds them (the
    # store is read once per run, and again only after another replica wrote to it).
    conversation: list[memory_pb2.StoredMessage] | None = None
    # The user's preferences and what the session may search (None: nothing applies).
    scope: SessionScope | None = None
    # What ends the session besides its strategy finishing (set by the engine per strategy).
    termination: Termination = field(default_factory=Never)
    # The round in progress (conversation strategies), so a stop mid-round counts it.
    round: int = 0
    # The answer of the newest turn of any kind (the final answer of last resort).
    last_text: str = ""

    @property
    def name(self) -> str:
        return self.session.name

    def key(self, label: str) -> str:
        """The idempotency key of one step, named by what it is (round and agent, task and
        attempt), so a replica resuming the session derives the same keys for the same steps."""
        return f"{self.name}/{label}"

    def interrupt(self) -> bool:
        """Stop the turn in progress (its message never completes); False when idle."""
        if self.current_turn is None or self.current_turn.done():
            return False
        self.interrupt_requested = True
        self.current_turn.cancel()
        return True

    # -- the session's state ----------------------------------------------------------------

    def save(self, fields: Sequence[str]) -> None:
        """Stage a change to the session (stored with the run's next commit)."""
        self.session.usage.CopyFrom(self.meter.snapshot())
        self.recorder.stage_update(self.session, [*fields, "usage"])

    def over_budget(self) -> bool:
        """True once the session's token budget (`max_total_tokens`) is spent."""
        budget = self.limits.max_total_tokens
        return budget > 0 and self.meter.total.total_tokens >= budget

    # -- turns and termination --------------------------------------------------------------

    async def run_turn(self, turn: Turn) -> TurnOutcome:
        """Run one agent turn, then check the termination condition (`Terminated` stops)."""
        outcome = await self.turns.run(turn)
        await self.after_turn(outcome, answers=turn.response_schema is None)
        return outcome

    async def remembered_turn(self, turn: Turn) -> TurnOutcome:
        """Run a turn whose answer joins the shared conversation (`Turn.remember`), keep it in
        the run's copy, then check the termination condition."""
        outcome = await self.turns.run(turn)
        self.remember(outcome)
        await self.after_turn(outcome)
        return outcome

    async def after_turn(self, outcome: TurnOutcome, *, answers: bool = True) -> None:
        """Check the termination condition after a turn (for turns run with `turns.run`);
        `answers` False for a turn whose text is no answer to the goal (a plan, an analysis)."""
        if answers:
            self.last_text = outcome.text
        await self.check(Phase.AFTER_TURN, outcome.text)

    async def check(self, phase: Phase, text: str = "") -> None:
        """Raise `Terminated` when the session's termination condition fires at `phase`."""
        stop = await self.termination.check(
            self,
            Progress(
                phase=phase,
                rounds_completed=self.session.rounds_completed,
                total_tokens=self.meter.total.total_tokens,
                now=dt.datetime.now(dt.UTC),
                text=text,
            ),
        )
        if stop is not None:
            raise Terminated(stop)

    async def ending_for(self, stop: Stop) -> Ending:
        """How the session ends after `stop`: its answer, else the conversation's last
        answer, else the newest turn's."""
        if self.round > self.session.rounds_completed:
            self.session.rounds_completed = self.round
        answer = stop.answer if stop.answer is not None else await self.last_answer()
        return Ending(answer or self.last_text, stop.reason)

    # -- the shared conversation ------------------------------------------------------------

    async def conversation_turn(self, agent: SessionAgent, round_number: int) -> TurnOutcome:
        """`agent` speaks once from the shared conversation; its answer joins it."""
        history = await self.history(agent)
        prompt = agent.user_template.render(
            TemplateValues(
                goal=self.session.goal,
                round=round_number,
                history_count=len(history),
                metadata=self.session.metadata,
            )
        )
        return await self.remembered_turn(
            Turn(
                agent=agent,
                prompt=prompt,
                history=history,
                tools=self.toolbox(agent, read_only=False),
                idempotency_key=self.key(f"r{round_number}-{agent.label}"),
                remember=True,
                round=round_number,
            )
        )

    async def interruptible(self, turn: Coroutine[Any, Any, TurnOutcome]) -> TurnOutcome | None:
        """Run `turn`; None when a user message interrupted it (`SendMessage` INTERRUPT)."""
        task = asyncio.create_task(turn)
        self.current_turn = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self.interrupt_requested:
                self.interrupt_requested = False
                await self.recorder.flush()
                return None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            self.current_turn = None

    async def deliver_user_messages(self) -> None:
        """Add the user messages that arrived while a turn ran to the conversation."""
        while not self.inbox.empty():
            content = self.inbox.get_nowait()
            await self.add_to_conversation(
                memory_pb2.StoredMessage(
                    message=messages_pb2.Message(role=messages_pb2.ROLE_USER, content=content)
                )
            )

    def remember(self, outcome: TurnOutcome) -> None:
        """Keep a turn's answer (stored with the turn, see `Turn.remember`) in the run's copy
        of the conversation, when it holds one."""
        if self.conversation is not None and outcome.remembered is not None:
            self._keep(self.conversation, outcome.remembered)

    async def add_to_conversation(self, message: memory_pb2.StoredMessage) -> None:
        """Stage `message` for the stored conversation and keep it in the run's copy."""
        conversation = await self.read_conversation()
        self.recorder.stage_messages([message])
        self._keep(conversation, message)

    def _keep(
        self, conversation: list[memory_pb2.StoredMessage], message: memory_pb2.StoredMessage
    ) -> None:
        """Add `message` to the run's copy, which holds the newest `history_messages`."""
        conversation.append(message)
        del conversation[: -self.settings.history_messages]

    async def read_conversation(self) -> list[memory_pb2.StoredMessage]:
        """The newest messages of the session's conversation, read from the store once per run
        (and again when another replica wrote to the session meanwhile)."""
        if self.conversation is None or self.recorder.foreign_writes:
            if self.recorder.messages_unstored:
                await self.recorder.flush()  # the read must see this run's own messages
            self.recorder.foreign_writes = False
            self.conversation = await self.store.recent_messages(
                self.tenant, self.name, self.settings.history_messages
            )
        return self.conversation

    async def history(self, agent: SessionAgent) -> list[messages_pb2.Message]:
        """The shared conversation as this agent sees it, newest messages within the budget
        of its model's context window (counted with the gateway's token estimator)."""
        stored = await self.read_conversation()
        window = agent.definition.model.context_window_tokens or self.settings.context_window_tokens
        budget = window - (agent.definition.generation.max_tokens or 1024) - 512
        budget -= count_text(agent.definition.prompts.system) + MESSAGE_OVERHEAD
        picked: list[messages_pb2.Message] = []
        for item in reversed(stored):
            message = as_seen_by(item, agent)
            cost = count_text(message.content) + count_text(message.name) + MESSAGE_OVERHEAD
            if cost > budget:
                break
            budget -= cost
            picked.append(message)
        picked.reverse()
        return picked

    async def last_answer(self) -> str:
        """The newest assistant answer of the conversation ("" when there is none)."""
        for item in reversed(await self.read_conversation()):
            if item.message.role == messages_pb2.ROLE_ASSISTANT and item.message.content:
                return item.message.content
        return ""

    # -- agents and tools -------------------------------------------------------------------

    def toolbox(self, agent: SessionAgent, *, read_only: bool) -> ToolBox:
        """The tools `agent` may call now (READ_ONLY ones only when `read_only`)."""
        return ToolBox(
            self.tools,
            agent.definition.tools,
            read_only=read_only,
            approval=agent.definition.tool_approval,
        )

    def member(self, name: str, field_name: str) -> SessionAgent:
        """The member called `name` (resource name or label); fails the session otherwise."""
        for agent in self.agents:
            if name in (agent.name, agent.label):
                return agent
        raise SessionFailure(code_pb2.INVALID_ARGUMENT, f"{field_name}: {name!r} is not a member")

    def agent_of_kind(self, kind: AgentKind) -> SessionAgent:
        """The first member of `kind`, or a built-in one."""
        for agent in self.agents:
            if agent.kind is kind:
                return agent
        return self.default_agent(kind, kind.value)

    def executor_for(self, agent_type: str) -> SessionAgent:
        """The member to run a plan task the planner gave `agent_type`."""
        wanted = AgentKind(agent_type) if agent_type in AgentKind._value2member_map_ else None
        for kind in (wanted, AgentKind.EXECUTOR):
            for agent in self.agents:
                if kind is not None and agent.kind is kind:
                    return agent
        return self.default_agent(wanted or AgentKind.EXECUTOR, agent_type or "executor")

    def default_agent(
        self,
        kind: AgentKind,
        label: str,
        *,
        system: str = "",
        tools: Sequence[str] = (),
        model: agents_pb2.ModelSelection | None = None,
        max_tokens: int = 0,
    ) -> SessionAgent:
        """A built-in agent on `model`, else on the user's model for its type, else the route
        of the session's first agent, else the user's default route, else the orchestrator's
        (preferences.builtin_model). It is kept with the session (`builtin_agents`)."""
        if model is not None and (model.route or model.model):
            chosen = agents_pb2.ModelSelection()
            chosen.CopyFrom(model)
        else:
            preferences = self.scope.preferences if self.scope is not None else None
            chosen = builtin_model(preferences, kind, self.agents, self.settings.default_route)
        model = chosen
        if not model.context_window_tokens:
            model.context_window_tokens = self.settings.builtin_context_window_tokens
        definition = agents_pb2.AgentDefinition(
            name=f"builtin/{label}",
            type=agent_type(kind.value),
            model=model,
            prompts=agents_pb2.AgentPrompts(system=system),
            tools=tools,
        )
        if max_tokens:
            definition.generation.max_tokens = max_tokens
        agent = prepare_agent(definition, field="builtin")
        self._record_builtin(agent)
        return agent

    def _record_builtin(self, agent: SessionAgent) -> None:
        """Keep a built-in agent's definition with the session, once (GetSession lists it)."""
        if any(known.name == agent.name for known in self.session.builtin_agents):
            return
        self.session.builtin_agents.append(agent.definition)
        # Not `save`: the session's usage is stored only where it already was (a snapshot
        # taken mid-round would be counted again when a resumed run reuses the round's calls).
        self.recorder.stage_update(self.session, ["builtin_agents"])


def as_seen_by(item: memory_pb2.StoredMessage, agent: SessionAgent) -> messages_pb2.Message:
    """A stored message as `agent` reads it in its history (tool calls as a line of text)."""
    message = item.message
    content = message.content
    for call in message.tool_calls:
        if call.name.startswith(HANDOFF_TOOL_PREFIX):
            note = (
                call.arguments.fields["note"].string_value
                if "note" in call.arguments.fields
                else ""
            )
            target = call.name.removeprefix(HANDOFF_TOOL_PREFIX)
            content = f"{content}\n(hands the conversation to {target}: {note})".strip()
    if message.role != messages_pb2.ROLE_ASSISTANT or item.agent == agent.name:
        return messages_pb2.Message(role=message.role, content=content, name=message.name)
    # Another agent's words reach this agent as a named user turn (AutoGen's convention).
    speaker = item.agent.rsplit("/", 1)[-1] or message.name
    return messages_pb2.Message(
        role=messages_pb2.ROLE_USER, content=f"[{speaker}] {content}", name=speaker
    )


def agent_type(name: str) -> agents_pb2.AgentType.ValueType:
    """The AgentType of a kind's name ("planner", "research", ...); CUSTOM otherwise."""
    return {
        "planner": agents_pb2.AGENT_TYPE_PLANNER,
        "executor": agents_pb2.AGENT_TYPE_EXECUTOR,
        "research": agents_pb2.AGENT_TYPE_RESEARCH,
        "synthesis": agents_pb2.AGENT_TYPE_SYNTHESIS,
        "validation": agents_pb2.AGENT_TYPE_VALIDATION,
        "critic": agents_pb2.AGENT_TYPE_CRITIC,
    }.get(name, agents_pb2.AGENT_TYPE_CUSTOM)
