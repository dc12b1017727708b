"""`python -m agentmesh_runner` (or `agentmesh-runner`) runs the local runner."""

from __future__ import annotations

import sys

from agentmesh_common import run

from .app import SERVICE_NAME, build
from .settings import RunnerSettings


def main() -> int:
    """Run until SIGTERM or SIGINT; the exit code is 0 after a clean shutdown."""
    return run(SERVICE_NAME, RunnerSettings, build)


if __name__ == "__main__":
    sys.exit(main())
