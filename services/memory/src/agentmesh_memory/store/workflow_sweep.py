"""What the sweeper deletes of workflow storage: rows only a bounded window needs.

- A FireTransition outcome answers a retry of the same `request_id`; it is kept as long as
  any other request id (`request_id_retention_seconds`).
- A schedule run is needed while its session has not ended (it counts against the schedule's
  `max_concurrent_runs`); one whose session ended, or was deleted, goes an hour after it
  started. The schedule's run counter and recent sessions live on the schedule itself.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from agentmesh_memory.db.tables import sessions
from agentmesh_memory.db.workflow_tables import fire_outcomes, schedule_runs

from .base import StoreContext
from .schedules import ENDED

__all__ = ["ENDED_RUN_RETENTION", "sweep_workflows"]

ENDED_RUN_RETENTION = timedelta(hours=1)


async def sweep_workflows(context: StoreContext, request_retention: timedelta) -> tuple[int, int]:
    """Delete old fire outcomes and ended schedule runs; returns both counts."""
    now = context.now()
    running = sa.exists().where(
        sessions.c.tenant_id == schedule_runs.c.tenant_id,
        sessions.c.session_id == schedule_runs.c.session_id,
        sessions.c.status.not_in(ENDED),
    )
    async with context.db.write("SweepWorkflows") as conn:
        outcomes = await conn.execute(
            sa.delete(fire_outcomes).where(fire_outcomes.c.create_time < now - request_retention)
        )
        runs = await conn.execute(
            sa.delete(schedule_runs).where(
                schedule_runs.c.create_time < now - ENDED_RUN_RETENTION, ~running
            )
        )
    return int(outcomes.rowcount or 0), int(runs.rowcount or 0)
