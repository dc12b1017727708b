"""Live terminal rendering of a session's event stream (Rich).

`SessionView` folds events into what a person wants to watch: a panel per agent with its
streaming text, the plan's tasks with status and timings, tool calls and results, and at the
end the final answer with a usage and cost table.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from google.protobuf.json_format import MessageToDict
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentmesh.common.v1 import approvals_pb2, events_pb2, generation_pb2, sessions_pb2

TASK_STYLES = {
    "pending": "dim",
    "running": "yellow",
    "done": "green",
    "failed": "red",
    "skipped": "dim strike",
    "cancelled": "magenta",
}
MAX_PANEL_CHARS = 1200
# C0 and C1 control characters except tab and newline: model output must not drive the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> Text:
    """Model or user text as a Rich `Text`: never parsed as markup, control characters removed."""
    return Text(_CONTROL.sub("", text))


@dataclass
class _Task:
    task_id: str
    description: str
    status: str = "pending"
    agent: str = ""
    started: float | None = None
    ended: float | None = None
    attempts: int = 0


@dataclass
class SessionView:
    """What has happened so far in a session, ready to draw."""

    session: str = ""
    last_seq: int = 0
    goal: str = ""
    analysis: str = ""
    agent_text: dict[str, str] = field(default_factory=dict)
    active_agent: str = ""
    tasks: dict[str, _Task] = field(default_factory=dict)
    tool_lines: list[str] = field(default_factory=list)
    final_answer: str | None = None
    outcome: str = ""
    usage: generation_pb2.Usage | None = None
    per_agent_usage: dict[str, generation_pb2.Usage] = field(default_factory=dict)

    def apply(self, event: events_pb2.SessionEvent) -> None:
        """Fold one event into the view."""
        kind = event.WhichOneof("payload")
        agent = event.agent.rsplit("/", 1)[-1]
        # One panel per agent and task: parallel tasks of one agent must not interleave.
        speaker = f"{agent} · {event.task_id}" if event.task_id else agent
        self.last_seq = max(self.last_seq, event.seq)
        now = time.monotonic()
        self.session = self.session or event.session
        if kind == "session_started":
            self.goal = event.session_started.goal
        elif kind == "analysis" and event.analysis.selected_agent:
            chosen = event.analysis.selected_agent.rsplit("/", 1)[-1]
            self.tool_lines.append(f"selector → {chosen}: {event.analysis.reason[:120]}")
        elif kind == "analysis":
            kinds = events_pb2.GoalKind.Name(event.analysis.kind).removeprefix("GOAL_KIND_")
            self.analysis = f"{kinds.lower()}: {event.analysis.reason}"
        elif kind == "handoff":
            target = event.handoff.to_agent.rsplit("/", 1)[-1]
            self.tool_lines.append(f"{agent} hands off to {target}: {event.handoff.note[:120]}")
        elif kind == "approval_requested":
            call = event.approval_requested.approval.call
            self.tool_lines.append(f"  ? {call.name} waits for approval")
        elif kind == "approval_resolved":
            approval = event.approval_resolved.approval
            state = approvals_pb2.ApprovalState.Name(approval.state).removeprefix("APPROVAL_STATE_")
            self.tool_lines.append(f"  {state.lower()}: {approval.call.name} {approval.comment}")
        elif kind == "plan_created":
            self.tasks = {
                t.task_id: _Task(t.task_id, t.description) for t in event.plan_created.plan.tasks
            }
        elif kind == "task_started":
            task = self.tasks.setdefault(
                event.task_id, _Task(event.task_id, event.task_started.description)
            )
            task.status, task.agent, task.attempts = "running", agent, event.task_started.attempt
            task.started = task.started or now
        elif kind == "task_completed":
            self._end_task(event.task_id, "done", now)
        elif kind == "task_failed":
            if not event.task_failed.will_retry:
                self._end_task(event.task_id, "failed", now)
        elif kind == "message_started":
            self.active_agent = speaker
            self.agent_text.setdefault(speaker, "")
        elif kind == "content_delta":
            self.agent_text[speaker] = self.agent_text.get(speaker, "") + event.content_delta.text
        elif kind == "tool_call":
            call = event.tool_call.call
            arguments = json.dumps(MessageToDict(call.arguments), separators=(",", ":"))
            self.tool_lines.append(f"{agent} → {call.name}({arguments[:120]})")
        elif kind == "tool_result":
            result = event.tool_result
            if result.HasField("error"):
                self.tool_lines.append(f"  ✗ {result.tool_name}: {result.error.message}")
            else:
                text = json.dumps(MessageToDict(result.result), separators=(",", ":"))
                self.tool_lines.append(f"  ← {result.tool_name}: {text[:160]}")
        elif kind == "message_completed":
            usage = self.per_agent_usage.setdefault(agent, generation_pb2.Usage())
            _add(usage, event.message_completed.usage)
            self.agent_text[speaker] = self.agent_text.get(speaker, "") + "\n"
        elif kind == "user_message":
            self.tool_lines.append(f"user: {event.user_message.content[:160]}")
        elif kind == "session_completed":
            self.outcome = f"completed ({event.session_completed.termination_reason})"
            self.final_answer = event.session_completed.final_answer
            self.usage = event.session_completed.usage
        elif kind == "session_failed":
            self.outcome = f"failed: {event.session_failed.error.message}"
            self.usage = event.session_failed.usage
        elif kind == "session_cancelled":
            self.outcome = f"cancelled ({event.session_cancelled.reason})"
            self.usage = event.session_cancelled.usage

    def _end_task(self, task_id: str, status: str, now: float) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            task.status, task.ended = status, now

    def render(self) -> RenderableType:
        """The whole view as one Rich renderable."""
        parts: list[RenderableType] = []
        header = plain(self.goal or self.session)
        header.stylize("bold")
        if self.analysis:
            header.append(f"\nrouter: {self.analysis}", style="cyan")
        parts.append(header)
        if self.tasks:
            parts.append(self._task_table())
        for agent, text in self.agent_text.items():
            shown = text.strip()
            if len(shown) > MAX_PANEL_CHARS:
                shown = "…" + shown[-MAX_PANEL_CHARS:]
            style = "yellow" if agent == self.active_agent and not self.outcome else "blue"
            parts.append(Panel(plain(shown or "…"), title=plain(agent), border_style=style))
        if self.tool_lines:
            parts.append(
                Panel(plain("\n".join(self.tool_lines[-12:])), title="tools", border_style="cyan")
            )
        if self.outcome:
            parts.extend(self._ending())
        return Group(*parts)

    def _task_table(self) -> Table:
        table = Table(title="plan", expand=True)
        for column in ("task", "status", "agent", "time", "description"):
            table.add_column(column)
        now = time.monotonic()
        for task in self.tasks.values():
            took = ""
            if task.started is not None:
                took = f"{(task.ended or now) - task.started:.1f}s"
            status = task.status + (f" (try {task.attempts})" if task.attempts > 1 else "")
            table.add_row(
                plain(task.task_id),
                Text(status, style=TASK_STYLES.get(task.status, "")),
                plain(task.agent),
                took,
                plain(task.description[:80]),
            )
        return table

    def _ending(self) -> list[RenderableType]:
        parts: list[RenderableType] = []
        if self.final_answer is not None:
            parts.append(
                Panel(plain(self.final_answer or "(empty)"), title="final answer", style="bold")
            )
        parts.append(Text(f"session {self.session}: {self.outcome}", style="bold"))
        if self.usage is not None:
            parts.append(usage_table(self.per_agent_usage, self.usage))
        return parts


def usage_table(per_agent: dict[str, generation_pb2.Usage], total: generation_pb2.Usage) -> Table:
    """Tokens and cost per agent and in total."""
    table = Table(title="usage")
    for column in ("agent", "prompt", "completion", "total", "cost (USD)"):
        table.add_column(column, justify="right" if column != "agent" else "left")
    for agent, usage in per_agent.items():
        table.add_row(plain(agent), *_usage_cells(usage))
    table.add_row(Text("total", style="bold"), *_usage_cells(total))
    return table


def _usage_cells(usage: generation_pb2.Usage) -> list[str]:
    mark = "~" if usage.estimated else ""
    return [
        f"{mark}{usage.prompt_tokens}",
        f"{mark}{usage.completion_tokens}",
        f"{mark}{usage.total_tokens}",
        f"{usage.cost_micros_usd / 1e6:.6f}",
    ]


def _add(total: generation_pb2.Usage, usage: generation_pb2.Usage) -> None:
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.total_tokens += usage.total_tokens
    total.cost_micros_usd += usage.cost_micros_usd
    total.estimated = total.estimated or usage.estimated


def status_name(status: sessions_pb2.SessionStatus.ValueType) -> str:
    """`SESSION_STATUS_RUNNING` -> `running`."""
    return sessions_pb2.SessionStatus.Name(status).removeprefix("SESSION_STATUS_").lower()
