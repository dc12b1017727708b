"""A replica's life, as a Temporal worker's: running → draining → stopped.

* **running**: sessions start here (runs, steps, takeovers of orphaned sessions);
* **draining** (SIGTERM): nothing new starts: a `Run`, `Step` or `Execute` is refused with
  UNAVAILABLE, reason REPLICA_DRAINING, so the client's retry goes to another replica; the
  takeover loop stops; every running session stops at its next turn boundary (the turn in
  progress finishes and is stored, so no model call is paid for twice), its lease released
  so another replica takes it over at once; sessions still in a turn when the grace period
  ends are abandoned (their writes stop, their leases are released);
* **stopped**: every task the manager started has ended.
"""

from __future__ import annotations

import enum

from agentmesh_common import Unavailable


class ReplicaState(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class ReplicaDraining(Unavailable):
    """This replica is shutting down: retry, and another replica serves the call. Raised
    where a session stops at a turn boundary too (the run's stream then ends with it, and the
    client follows the session with StreamSession wherever it goes on)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "this replica is shutting down; retry and another replica will serve the call",
            reason="REPLICA_DRAINING",
            retry_after=0.1,
        )
