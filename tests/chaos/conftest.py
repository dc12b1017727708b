"""The chaos suite's report: after the run, a table of every figure the tests gathered, also
written as JSON (to `AGENTMESH_CHAOS_REPORT`, default `<tmp>/agentmesh-chaos.json`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .support import FIGURES, OUTCOMES, PENDING, REPORT_VAR, scale, strict


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES and not OUTCOMES:
        return
    rows = [(name, str(value)) for name, value in FIGURES.items()]
    for kind, outcomes in OUTCOMES.items():
        rows += [(f"{kind}: {code}", str(n)) for code, n in sorted(outcomes.items())]
    rows += [(f"pending {finding}", detail) for finding, detail in PENDING.items()]
    width = max(len(name) for name, _ in rows)
    write = terminalreporter.write_line
    write("")
    write(f"chaos figures (AGENTMESH_CHAOS_SCALE={scale()}, strict={strict()})")
    for name, value in rows:
        write(f"  {name.ljust(width)}  {value}")
    path = Path(os.environ.get(REPORT_VAR) or Path(tempfile.gettempdir()) / "agentmesh-chaos.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scale": scale(),
        "strict": strict(),
        "figures": dict(FIGURES),
        "outcomes": {kind: dict(outcomes) for kind, outcomes in OUTCOMES.items()},
        "pending": PENDING,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    write(f"  written to {path}")
