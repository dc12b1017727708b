"""Context assembly beyond the conversation: what an agent should know when its turn starts.

Before each turn, `ContextAssembler.prepare` adds, when they apply:

* **recalled memories** (agents whose memory policy reads): the entries of the session's user
  whose keys and values best match the turn (full-text search), then the most recently used,
  up to `max_entries_in_context`; counted as reads; added to the system prompt;
* **addressed messages** (sessions with `send_message`): what other agents sent this agent,
  and what it sent, in order, as messages before its prompt; nobody else sees them;
* **retrieved passages** (research agents with `search_documents`, when the session has
  documents to search): a search the orchestrator makes itself with the turn's topic, shown
  as a `tool_call` and `tool_result` (with citations) and added to the prompt as numbered
  sources, so the answer can cite them whatever the model does with tools.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from agentmesh.common.v1 import (
    agents_pb2,
    events_pb2,
    knowledge_pb2,
    memory_entries_pb2,
    messages_pb2,
)
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import AgentmeshError, NotFound

from .agents import SessionAgent
from .domain.agent_types import AgentKind
from .knowledge import SEARCH_TOOL, DocumentSearch, passages_result, render_sources
from .preferences import SessionScope

__all__ = [
    "AddressedMessages",
    "ContextAssembler",
    "MemoryRecall",
    "PreparedContext",
    "Retrieval",
    "retrieval_events",
    "topic_of",
]

DEFAULT_RECALL = 10
INBOX_SIZE = 20
MEMORY_VALUE_CHARS = 500
_LABEL = re.compile(r"^\s*[A-Z][A-Za-z ]{0,24}:\s*")
_TYPE_NAMES = {
    messages_pb2.MESSAGE_TYPE_REQUEST: "request",
    messages_pb2.MESSAGE_TYPE_RESPONSE: "response",
    messages_pb2.MESSAGE_TYPE_NOTIFICATION: "notification",
}


class MemoryRecall(Protocol):
    """Memory search (the memory service's SearchMemories)."""

    async def recall_memories(
        self,
        tenant: str,
        parent: str,
        query: str,
        *,
        types: Sequence[agents_pb2.MemoryType.ValueType],
        limit: int,
    ) -> list[memory_entries_pb2.MemoryEntry]:
        """Best matches first, filled up with the most recently used; counted as read."""
        ...


class AddressedMessages(Protocol):
    """Addressed messages of a session (the memory service's ListMessages)."""

    async def addressed_messages(
        self, tenant: str, session: str, participant: str, newest: int
    ) -> list[memory_pb2.StoredMessage]:
        """Messages `participant` sent or receives, oldest first (the newest N)."""
        ...


@dataclass(frozen=True)
class Retrieval:
    """A search the orchestrator made for a turn: shown as a tool call and its result."""

    call_id: str
    query: str
    result: struct_pb2.Struct
    citations: tuple[knowledge_pb2.Citation, ...]


@dataclass(frozen=True)
class PreparedContext:
    """What a turn's conversation gets besides its system prompt, history and prompt."""

    system_notes: str = ""
    messages: tuple[messages_pb2.Message, ...] = ()
    prompt_notes: str = ""
    retrieval: Retrieval | None = None

    @property
    def empty(self) -> bool:
        return not (self.system_notes or self.messages or self.prompt_notes)


def retrieval_events(
    agent: str, task_id: str, retrieval: Retrieval
) -> tuple[events_pb2.SessionEvent, events_pb2.SessionEvent]:
    """The orchestrator's own search as a `tool_call` and a `tool_result` with citations."""
    arguments = struct_pb2.Struct()
    arguments.update({"query": retrieval.query})
    call = messages_pb2.ToolCall(id=retrieval.call_id, name=SEARCH_TOOL, arguments=arguments)
    return (
        events_pb2.SessionEvent(
            agent=agent, task_id=task_id, tool_call=events_pb2.ToolCallEvent(call=call)
        ),
        events_pb2.SessionEvent(
            agent=agent,
            task_id=task_id,
            tool_result=events_pb2.ToolResult(
                tool_call_id=retrieval.call_id,
                tool_name=SEARCH_TOOL,
                result=retrieval.result,
                citations=retrieval.citations,
            ),
        ),
    )


def topic_of(prompt: str, limit: int = 600) -> str:
    """What a turn is about, for search: its prompt without the template's labels and
    without the context section (earlier outputs would drown the question)."""
    head = prompt.split("\n\nContext:", 1)[0].split("\n\nResults:", 1)[0]
    lines = [_LABEL.sub("", line) for line in head.splitlines()]
    return " ".join(line.strip() for line in lines if line.strip())[:limit]


@dataclass
class ContextAssembler:
    """Prepares each turn's extra context from memory, messages and documents."""

    recall: MemoryRecall | None = None
    inbox: AddressedMessages | None = None
    documents: DocumentSearch | None = None
    retrieval_passages: int = 3

    async def prepare(
        self, scope: SessionScope, agent: SessionAgent, prompt: str
    ) -> PreparedContext:
        topic = topic_of(prompt) or scope.goal
        system_notes = await self._memories(scope, agent, topic)
        messages = await self._inbox(scope, agent)
        retrieval = await self._retrieve(scope, agent, topic)
        return PreparedContext(
            system_notes=system_notes,
            messages=messages,
            prompt_notes=render_sources(retrieval.citations) if retrieval is not None else "",
            retrieval=retrieval,
        )

    async def _memories(self, scope: SessionScope, agent: SessionAgent, topic: str) -> str:
        policy = agent.definition.memory_policy
        if self.recall is None or not policy.read or not agent.name.startswith("agents/"):
            return ""
        parent = f"{agent.name}/users/{scope.user}"
        try:
            entries = await self.recall.recall_memories(
                scope.tenant,
                parent,
                topic,
                types=list(policy.types),
                limit=policy.max_entries_in_context or DEFAULT_RECALL,
            )
        except NotFound:  # an inline agent: it has no memory
            return ""
        if not entries:
            return ""
        lines = ["What you remember about this user (most relevant first):"]
        for entry in entries:
            value = json.dumps(MessageToDict(entry.value), ensure_ascii=False)
            lines.append(f"- {entry.name.rsplit('/', 1)[-1]}: {value[:MEMORY_VALUE_CHARS]}")
        return "\n".join(lines)

    async def _inbox(
        self, scope: SessionScope, agent: SessionAgent
    ) -> tuple[messages_pb2.Message, ...]:
        if self.inbox is None or not scope.messaging:
            return ()
        stored = await self.inbox.addressed_messages(
            scope.tenant, scope.session, agent.name, INBOX_SIZE
        )
        rendered: list[messages_pb2.Message] = []
        for item in stored:
            kind = _TYPE_NAMES.get(item.type, "message")
            if item.agent == agent.name:
                to = ", ".join(r.rsplit("/", 1)[-1] for r in item.recipients)
                text = f"[you wrote to {to} ({kind})] {item.message.content}"
            else:
                text = (
                    f"[{kind} from {item.agent.rsplit('/', 1)[-1]} to you] {item.message.content}"
                )
            rendered.append(messages_pb2.Message(role=messages_pb2.ROLE_USER, content=text))
        return tuple(rendered)

    async def _retrieve(
        self, scope: SessionScope, agent: SessionAgent, topic: str
    ) -> Retrieval | None:
        if (
            self.documents is None
            or self.retrieval_passages <= 0
            or agent.kind is not AgentKind.RESEARCH
            or SEARCH_TOOL not in agent.definition.tools
            or scope.documents.empty
            or not topic
        ):
            return None
        try:
            citations = await self.documents.search_passages(
                scope.tenant,
                topic,
                collections=scope.documents.collections,
                documents=scope.documents.documents,
                limit=self.retrieval_passages,
            )
        except AgentmeshError:  # e.g. a topic of common words only: the turn goes on
            return None
        if not citations:
            return None
        return Retrieval(
            call_id=f"retrieval-{uuid.uuid4().hex[:12]}",
            query=topic,
            result=passages_result(topic, citations),
            citations=tuple(citations),
        )
