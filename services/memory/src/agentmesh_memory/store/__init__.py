"""The memory service's logic and SQL, one store per resource family, behind :class:`Stores`."""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh_memory.db.database import Database
from agentmesh_memory.db.notifier import EventNotifier

from .agent_stats import AgentStatsStore
from .agents import AgentStore
from .api_keys import ApiKeyStore
from .approvals import ApprovalStore
from .base import Clock, StoreContext, system_clock
from .events import EventStore
from .knowledge import KnowledgeStore
from .ledger import LedgerStore
from .memories import MemoryStore, SettingsStore
from .recall import MemoryInsights
from .search import SearchStore
from .sessions import SessionStore
from .steps import StepStore
from .tools import ToolServerStore
from .work import MessageStore, TaskStore
from .workflow_stores import WorkflowStores

__all__ = [
    "AgentStatsStore",
    "AgentStore",
    "ApiKeyStore",
    "ApprovalStore",
    "EventStore",
    "KnowledgeStore",
    "LedgerStore",
    "MemoryInsights",
    "MemoryStore",
    "MessageStore",
    "SearchStore",
    "SessionStore",
    "SettingsStore",
    "StepStore",
    "StoreContext",
    "Stores",
    "TaskStore",
    "ToolServerStore",
    "WorkflowStores",
]


@dataclass(frozen=True)
class Stores:
    """Every store of the service, sharing one database, notifier and clock."""

    agents: AgentStore
    sessions: SessionStore
    messages: MessageStore
    tasks: TaskStore
    events: EventStore
    ledger: LedgerStore
    steps: StepStore
    memories: MemoryStore
    settings: SettingsStore
    api_keys: ApiKeyStore
    tool_servers: ToolServerStore
    approvals: ApprovalStore
    knowledge: KnowledgeStore
    search: SearchStore
    insights: MemoryInsights
    agent_stats: AgentStatsStore

    @classmethod
    def build(
        cls,
        db: Database,
        notifier: EventNotifier,
        *,
        clock: Clock = system_clock,
        watch_poll_seconds: float = 2.0,
        max_document_bytes: int = 20 * 1024 * 1024,
    ) -> Stores:
        context = StoreContext(db, clock)
        sessions = SessionStore(context)
        messages = MessageStore(context)
        events = EventStore(context, notifier, poll_seconds=watch_poll_seconds)
        ledger = LedgerStore(context)
        approvals = ApprovalStore(context, events=events)
        return cls(
            agents=AgentStore(context),
            sessions=sessions,
            messages=messages,
            tasks=TaskStore(context),
            events=events,
            ledger=ledger,
            steps=StepStore(
                context,
                sessions=sessions,
                messages=messages,
                events=events,
                ledger=ledger,
                approvals=approvals,
            ),
            memories=MemoryStore(context),
            settings=SettingsStore(context),
            api_keys=ApiKeyStore(context, notifier),
            tool_servers=ToolServerStore(context),
            approvals=approvals,
            knowledge=KnowledgeStore(context, max_document_bytes=max_document_bytes),
            search=SearchStore(context),
            insights=MemoryInsights(context),
            agent_stats=AgentStatsStore(context),
        )
