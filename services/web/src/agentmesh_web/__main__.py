"""`python -m agentmesh_web` (or `agentmesh-web`) runs the web edge."""

from __future__ import annotations

import sys

from agentmesh_common import run

from .app import SERVICE_NAME, build
from .settings import WebSettings


def main() -> int:
    """Run until SIGTERM or SIGINT; the exit code is 0 after a clean shutdown."""
    return run(SERVICE_NAME, WebSettings, build)


if __name__ == "__main__":
    sys.exit(main())
