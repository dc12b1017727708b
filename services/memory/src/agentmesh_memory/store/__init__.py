"""The memory service's logic and SQL, one store per resource family, behind :class:`Stores`."""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh_memory.db.database import Database
from agentmesh_memory.db.notifier import EventNotifier

from .agents import AgentStore
from .base import Clock, StoreContext, system_clock
from .events import EventStore
from .ledger import LedgerStore
from .memories import ApiKeyStore, MemoryStore, SettingsStore
from .sessions import SessionStore
from .tools import ToolServerStore
from .work import MessageStore, TaskStore

__all__ = [
    "AgentStore",
    "ApiKeyStore",
    "EventStore",
    "LedgerStore",
    "MemoryStore",
    "MessageStore",
    "SessionStore",
    "SettingsStore",
    "StoreContext",
    "Stores",
    "TaskStore",
    "ToolServerStore",
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
    memories: MemoryStore
    settings: SettingsStore
    api_keys: ApiKeyStore
    tool_servers: ToolServerStore

    @classmethod
    def build(
        cls,
        db: Database,
        notifier: EventNotifier,
        *,
        clock: Clock = system_clock,
        watch_poll_seconds: float = 2.0,
    ) -> Stores:
        context = StoreContext(db, clock)
        return cls(
            agents=AgentStore(context),
            sessions=SessionStore(context),
            messages=MessageStore(context),
            tasks=TaskStore(context),
            events=EventStore(context, notifier, poll_seconds=watch_poll_seconds),
            ledger=LedgerStore(context),
            memories=MemoryStore(context),
            settings=SettingsStore(context),
            api_keys=ApiKeyStore(context),
            tool_servers=ToolServerStore(context),
        )
