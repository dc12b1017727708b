"""Where a cold `agentmesh up` spends its start-up time (issue 16, finding 10).

Measures, on this machine:
- imports: a fresh interpreter importing each service's package and its app module (what
  every service process pays before it can listen), the best of 3;
- `agentmesh up` from an empty data directory to `mesh.json` (ready: every service answered
  SERVING and the API key exists), with each service's "ready in" time as `up` prints it, and
  from each service's log: the time from its first log record to "service started" (settings,
  migrations, model registry, binding) — once with routes to an idle provider, once with the
  embedded default (the local runner's SmolLM2 route);
- a warm `up` on the same data directory (migrations already applied).

Usage: uv run --frozen --all-packages python bench/startup/run.py [--runs N]
Writes bench/startup/results.json and prints a table (recorded in RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
AGENTMESH = str(Path(sys.executable).parent / "agentmesh")
MODULES = {
    "memory": "agentmesh_memory.app",
    "local-runner": "agentmesh_runner.app",
    "inference-gateway": "agentmesh_gateway.app",
    "orchestrator": "agentmesh_orchestrator.app",
    "web": "agentmesh_web.app",
}
IDLE_ROUTES = (
    "routes:\n  default:\n    - name: idle\n      provider: openai_compatible\n"
    "      model: idle\n      base_url: http://127.0.0.1:9/v1\n"
)


def import_seconds(module: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def interpreter_seconds(runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def up(data_dir: Path, *args: str) -> dict[str, Any]:
    """Start `up`, time it to mesh.json, read its ready lines and the logs, stop it."""
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [AGENTMESH, "up", "--data-dir", str(data_dir), "--port-base", "0", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while not (data_dir / "mesh.json").exists():
            if process.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(f"up did not come up: {process.communicate()[0]}")
            time.sleep(0.02)
        ready = time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    services = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^\s+(\S+)\s+ready in\s+([0-9.]+)s", out, re.M)
    }
    return {
        "ready_seconds": round(ready, 2),
        "service_ready_seconds": services,
        "in_process": _logs(data_dir),
    }


def _logs(data_dir: Path) -> dict[str, float]:
    """Per service, in its last start: seconds from its first timestamped log record to
    "service started" (the logs of a warm start follow those of the cold one)."""
    spans = {}
    for log in sorted((data_dir / "logs").glob("*.log")):
        first = None
        for line in log.read_text().splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            ts = record.get("ts")
            if ts is None:
                continue
            moment = datetime.fromisoformat(ts).timestamp()
            first = moment if first is None else first
            if record.get("message") == "service started":
                spans[log.stem] = round(moment - first, 2)
            if record.get("message") in ("service started", "service stopped"):
                first = None  # the next record is of the next start
    return spans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_start": os.getloadavg()[0],
        "command": "uv run --frozen --all-packages python bench/startup/run.py",
        "interpreter_seconds": round(interpreter_seconds(), 2),
        "import_seconds": {name: round(import_seconds(m), 2) for name, m in MODULES.items()},
        "cold_idle_routes": [],
        "warm_idle_routes": [],
        "cold_default_routes": [],
    }
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "mesh"
            routes = Path(tmp) / "routes.yaml"
            routes.write_text(IDLE_ROUTES)
            results["cold_idle_routes"].append(up(data_dir, "--routes", str(routes)))
            results["warm_idle_routes"].append(up(data_dir, "--routes", str(routes)))
        with tempfile.TemporaryDirectory() as tmp:
            results["cold_default_routes"].append(up(Path(tmp) / "mesh"))
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
