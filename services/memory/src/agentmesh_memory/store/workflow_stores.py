"""The stores of the workflow storage service (``WorkflowStoreService``), built together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from agentmesh_memory.db.database import Database
from agentmesh_memory.db.notifier import EventNotifier

from .base import Clock, StoreContext, system_clock
from .due_work import DueWorkStore
from .schedules import ScheduleStore
from .tokens import TokenStore
from .workflow_events import WorkflowEventStore
from .workflow_sweep import sweep_workflows
from .workflows import WorkflowRecordStore

__all__ = [
    "DueWorkStore",
    "ScheduleStore",
    "TokenStore",
    "WorkflowEventStore",
    "WorkflowRecordStore",
    "WorkflowStores",
]


@dataclass(frozen=True)
class WorkflowStores:
    """Workflows, tokens, their events, schedules and due work, on one database."""

    workflows: WorkflowRecordStore
    tokens: TokenStore
    events: WorkflowEventStore
    schedules: ScheduleStore
    due_work: DueWorkStore
    context: StoreContext

    async def sweep(self, request_retention: timedelta) -> tuple[int, int]:
        """Delete fire outcomes past the retention and ended schedule runs (see
        workflow_sweep); returns both counts."""
        return await sweep_workflows(self.context, request_retention)

    @classmethod
    def build(
        cls,
        db: Database,
        notifier: EventNotifier,
        *,
        clock: Clock = system_clock,
        watch_poll_seconds: float = 2.0,
    ) -> WorkflowStores:
        """``notifier`` carries workflow event wake-ups (its own channel on PostgreSQL)."""
        context = StoreContext(db, clock)
        events = WorkflowEventStore(context, notifier, poll_seconds=watch_poll_seconds)
        return cls(
            workflows=WorkflowRecordStore(context, events),
            tokens=TokenStore(context, events),
            events=events,
            schedules=ScheduleStore(context),
            due_work=DueWorkStore(context),
            context=context,
        )
