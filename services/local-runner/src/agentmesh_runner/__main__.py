"""`python -m agentmesh_runner` (or `agentmesh-runner`) runs the local runner.

`agentmesh-runner import-gguf FILE [--name NAME] [--models-dir DIR]` imports a llama GGUF
(llama.cpp, Ollama) into the models directory instead, so the runner serves it by name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from agentmesh_common import AgentmeshError, run

from .app import SERVICE_NAME, build
from .settings import RunnerSettings


def import_command(argv: list[str]) -> int:
    """Import one GGUF file; one line on success or failure."""
    from .gguf_import import import_gguf

    parser = argparse.ArgumentParser(
        prog="agentmesh-runner import-gguf",
        description="Import a llama-architecture GGUF file as an mlx-lm model directory.",
    )
    parser.add_argument("file", type=Path, help="the .gguf file")
    parser.add_argument("--name", help="model name (default: the file name, lower case)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="where models live (default: AGENTMESH_RUNNER_MODELS_DIR or .data/models)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model")
    args = parser.parse_args(argv)
    models_dir = args.models_dir or RunnerSettings().models_dir
    try:
        result = import_gguf(args.file, models_dir, args.name, overwrite=args.force)
    except AgentmeshError as exc:
        print(f"agentmesh-runner import-gguf: {exc.message} [{exc.reason}]", file=sys.stderr)
        return 1
    bits = result.quantization.get("bits", "float")
    print(
        f"imported {args.file.name} as {result.name!r} into {result.path} "
        f"({result.tensors} tensors, {bits}-bit, {result.seconds:.1f} s)"
    )
    return 0


def main() -> int:
    """Run until SIGTERM or SIGINT; the exit code is 0 after a clean shutdown."""
    if sys.argv[1:2] == ["import-gguf"]:
        return import_command(sys.argv[2:])
    _exit_now(run(SERVICE_NAME, RunnerSettings, build))


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, once the service has stopped and
    everything is flushed.

    mlx-lm makes an MLX stream when imported, and the runner imports it (and runs models) in
    threads other than the main one. The C++ teardown at interpreter exit then aborts about
    one time in three ("terminate called without an active exception", SIGABRT), turning a
    clean stop into exit code -6. Nothing is left to do by then, so skip it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
