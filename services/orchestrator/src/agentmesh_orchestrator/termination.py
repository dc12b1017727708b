"""Termination conditions: small objects the runtime checks, combined with `|` and `&`.

As AutoGen's `conditions/`: each condition looks at the session's progress at a checkpoint and
says whether to stop, and why. The runtime checks the session's condition after every agent
turn of every strategy (`Phase.AFTER_TURN`); conversation strategies also check before each
round (`Phase.BEFORE_ROUND`) and after it (`Phase.AFTER_ROUND`, where a judge is asked).

- `StopPhrase`: an answer contains the phrase (case-insensitive); that answer is the final one.
- `MaxRounds`: the rounds allowed are done.
- `TokenBudget`: the session's tokens reached `max_total_tokens`.
- `Judge`: after a round, a member asked whether the goal is reached starts with GOAL REACHED.
- `Deadline`: the session's deadline passed (a turn in flight is stopped by the engine).

`a | b` stops when either does (checked in order, the first to fire names the reason);
`a & b` stops once both have fired, at the same checkpoint or not (the reasons joined by "+").
A stop ends the session with session_completed, its `termination_reason` the stop's reason.
"""

from __future__ import annotations

import datetime as dt
import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentmesh.common.v1 import sessions_pb2

from .agents import SessionAgent
from .turns import Turn

if TYPE_CHECKING:
    from .runtime import Limits, Runtime

JUDGE_PROMPT = (
    "Goal: {goal}\n\nAfter round {round}, has the conversation reached the goal? Start your "
    "answer with GOAL REACHED or GOAL NOT REACHED, then say why in one sentence."
)


class Phase(enum.Enum):
    """Where in a run the conditions are checked."""

    BEFORE_ROUND = "before_round"
    AFTER_TURN = "after_turn"
    AFTER_ROUND = "after_round"


@dataclass(frozen=True)
class Progress:
    """What the conditions look at."""

    phase: Phase
    rounds_completed: int
    total_tokens: int
    now: dt.datetime
    text: str = ""  # the answer just given (AFTER_TURN)


@dataclass(frozen=True)
class Stop:
    """Why the session stops; `answer` None means the conversation's last answer."""

    reason: str
    answer: str | None = None


class Terminated(Exception):
    """Raised by the runtime when the session's termination condition fired."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.reason)
        self.stop = stop


class Termination(ABC):
    """A condition that may end a session."""

    @abstractmethod
    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        """Stop, or None to go on."""

    def reset(self) -> None:
        """Forget what was seen (for conditions that remember, such as `AllOf`)."""
        return None

    def __or__(self, other: Termination) -> Termination:
        return AnyOf((self, other))

    def __and__(self, other: Termination) -> Termination:
        return AllOf((self, other))


@dataclass(frozen=True)
class Never(Termination):
    """Never stops (the neutral condition)."""

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        return None

    def __or__(self, other: Termination) -> Termination:
        return other


@dataclass(frozen=True)
class StopPhrase(Termination):
    """An answer containing `phrase` (case-insensitive) ends the session with that answer."""

    phrase: str

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        if progress.phase is Phase.AFTER_TURN and self.phrase.lower() in progress.text.lower():
            return Stop("stop_phrase", progress.text)
        return None


@dataclass(frozen=True)
class MaxRounds(Termination):
    """`rounds` rounds are done (checked before a round starts)."""

    rounds: int

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        if progress.phase is Phase.BEFORE_ROUND and progress.rounds_completed >= self.rounds:
            return Stop("max_rounds")
        return None


@dataclass(frozen=True)
class TokenBudget(Termination):
    """The session's total tokens reached `tokens` (checked after each turn)."""

    tokens: int

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        if progress.phase is not Phase.AFTER_ROUND and progress.total_tokens >= self.tokens:
            return Stop("token_budget")
        return None


@dataclass(frozen=True)
class Deadline(Termination):
    """The session's deadline passed."""

    at: dt.datetime

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        return Stop("deadline") if progress.now >= self.at else None


@dataclass(frozen=True)
class Judge(Termination):
    """After each round, `judge` says whether the conversation reached the goal."""

    judge: SessionAgent

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        if progress.phase is not Phase.AFTER_ROUND:
            return None
        round_number = progress.rounds_completed
        outcome = await rt.turns.run(
            Turn(
                agent=self.judge,
                prompt=JUDGE_PROMPT.format(goal=rt.session.goal, round=round_number),
                history=await rt.history(self.judge),
                tools=rt.toolbox(self.judge, read_only=True),
                idempotency_key=rt.key(f"r{round_number}-judge-{self.judge.label}"),
                round=round_number,
            )
        )
        if outcome.text.strip().upper().startswith("GOAL REACHED"):
            return Stop("judge")
        return None


@dataclass(frozen=True)
class AnyOf(Termination):
    """Stops when any of `conditions` does (the first, in order, names the reason)."""

    conditions: Sequence[Termination]

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        for condition in self.conditions:
            stop = await condition.check(rt, progress)
            if stop is not None:
                return stop
        return None

    def reset(self) -> None:
        for condition in self.conditions:
            condition.reset()

    def __or__(self, other: Termination) -> Termination:
        return AnyOf((*self.conditions, other))


class AllOf(Termination):
    """Stops once every one of `conditions` has fired, at the same checkpoint or not."""

    def __init__(self, conditions: Sequence[Termination]) -> None:
        self.conditions = tuple(conditions)
        self._fired: dict[int, Stop] = {}

    async def check(self, rt: Runtime, progress: Progress) -> Stop | None:
        for index, condition in enumerate(self.conditions):
            if index in self._fired:
                continue
            stop = await condition.check(rt, progress)
            if stop is not None:
                self._fired[index] = stop
        if len(self._fired) < len(self.conditions):
            return None
        stops = [self._fired[i] for i in range(len(self.conditions))]
        answer = next((s.answer for s in stops if s.answer is not None), None)
        return Stop("+".join(s.reason for s in stops), answer)

    def reset(self) -> None:
        self._fired.clear()
        for condition in self.conditions:
            condition.reset()


def any_of(*conditions: Termination | None) -> Termination:
    """The conditions that are set, combined with `|` (`Never` when none is)."""
    present = [c for c in conditions if c is not None]
    if not present:
        return Never()
    return present[0] if len(present) == 1 else AnyOf(tuple(present))


def limits_termination(limits: Limits) -> Termination:
    """What ends every session, whatever its strategy: the token budget and the deadline."""
    return any_of(
        TokenBudget(limits.max_total_tokens) if limits.max_total_tokens > 0 else None,
        Deadline(limits.deadline) if limits.deadline is not None else None,
    )


def conversation_termination(
    session: sessions_pb2.Session, limits: Limits, judge: SessionAgent | None
) -> Termination:
    """A conversation's conditions (round-robin, selector, handoff), in the order they are
    checked: the stop phrase, the token budget, the judge, max rounds, the deadline."""
    phrase = session.termination.stop_phrase
    return any_of(
        StopPhrase(phrase) if phrase else None,
        TokenBudget(limits.max_total_tokens) if limits.max_total_tokens > 0 else None,
        Judge(judge) if judge is not None else None,
        MaxRounds(limits.max_rounds),
        Deadline(limits.deadline) if limits.deadline is not None else None,
    )
