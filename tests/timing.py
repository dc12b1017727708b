"""Deadlines that scale with the machine, for the slow multi-process tests.

A deadline written as a fixed number of seconds is right on one machine only: on a loaded
2-core runner `agentmesh up` took over 90 s where a quiet laptop needs under 10 s (issue 16,
finding 10). `scaled(base)` multiplies a base deadline, chosen for a quiet machine, by
`time_scale()`:

- `AGENTMESH_TEST_TIME_SCALE` (a float ≥ 1), when set, is used as is;
- otherwise the factor is measured once per test process: a fixed pure-Python workload is
  timed against its time on a quiet reference machine, and multiplied by how far the 1-minute
  load average exceeds the number of cores. It is clamped to [1, 8] so that a hung test still
  fails in bounded time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time

__all__ = ["ENV_VAR", "scaled", "time_scale"]

ENV_VAR = "AGENTMESH_TEST_TIME_SCALE"
#: Seconds the workload below takes on an idle reference machine (one core of a 2-core runner).
_REFERENCE_SECONDS = 0.035
_MAX_SCALE = 8.0


def _workload() -> float:
    started = time.perf_counter()
    digest = b"agentmesh"
    for _ in range(40_000):
        digest = hashlib.sha256(digest).digest()
    total = 0
    for i in range(200_000):
        total += i * i % 7
    return time.perf_counter() - started


@functools.cache
def time_scale() -> float:
    """How much slower than the reference machine this one is now (≥ 1)."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return max(1.0, float(configured))
    speed = min(_workload() for _ in range(3)) / _REFERENCE_SECONDS
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0] / cores
    except OSError:
        load = 1.0
    return min(_MAX_SCALE, max(1.0, speed) * max(1.0, load))


def scaled(base_seconds: float) -> float:
    """`base_seconds` (right for a quiet machine) scaled to this machine."""
    return base_seconds * time_scale()
