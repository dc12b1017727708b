"""GGUF files through the running service: a `.gguf` path as the model, the packaged default
model imported at start, and the `agentmesh-runner import-gguf` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import grpc
import pytest

from agentmesh.common.v1 import generation_pb2
from agentmesh.runner.v1 import runner_pb2

from .conftest import StartRunner
from .gguf_files import write_gguf
from .test_generate import collect, request


async def test_a_gguf_path_given_as_the_model_is_imported_once_and_served(
    start_runner: StartRunner, tiny_model: Path
) -> None:
    runner = await start_runner()
    write_gguf(tiny_model, runner.models_dir / "tiny-q8.gguf", quant=gguf.GGMLQuantizationType.Q8_0)
    deltas, finished = await collect(runner, request(model="tiny-q8.gguf", max_tokens=8))
    assert finished.usage.completion_tokens > 0
    assert "".join(deltas) == finished.text
    marker = json.loads((runner.models_dir / "tiny-q8" / "import.json").read_text())
    assert marker["quantization"]["bits"] == 8
    again = await runner.stub.LoadModel(runner_pb2.LoadModelRequest(model="tiny-q8.gguf"))
    assert again.model.loaded


async def test_concurrent_first_requests_for_one_gguf_import_it_once(
    start_runner: StartRunner, tiny_model: Path
) -> None:
    runner = await start_runner()
    write_gguf(tiny_model, runner.models_dir / "tiny-f32.gguf", quant=gguf.GGMLQuantizationType.F32)
    results = await asyncio.gather(
        *(collect(runner, request(f"caller {i}", model="tiny-f32.gguf")) for i in range(3))
    )
    assert all(finished.usage.completion_tokens > 0 for _, finished in results)
    assert sorted(p.name for p in runner.models_dir.iterdir()) == [
        "tiny",
        "tiny-f32",
        "tiny-f32.gguf",
    ]


async def test_a_missing_gguf_is_not_found(start_runner: StartRunner) -> None:
    runner = await start_runner()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(runner, request(model="nowhere.gguf"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_corrupt_gguf_is_a_failed_precondition(start_runner: StartRunner) -> None:
    runner = await start_runner()
    (runner.models_dir / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(runner, request(model="broken.gguf"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "broken.gguf" in (caught.value.details() or "")
    assert not (runner.models_dir / "broken").exists()


async def test_the_packaged_default_model_is_imported_at_start(start_runner: StartRunner) -> None:
    runner = await start_runner(import_default_model=True)
    listed = await runner.stub.ListModels(runner_pb2.ListModelsRequest())
    by_name = {m.name: m for m in listed.models}
    assert "smollm2" in by_name
    assert 134_000_000 < by_name["smollm2"].parameters < 136_000_000  # values, not packed words
    assert by_name["smollm2"].context_length == 8192


@pytest.mark.parametrize("backend", ["cpu", "mlx"])
async def test_smollm2_answers_a_factual_question_at_temperature_0(
    start_runner: StartRunner, backend: str
) -> None:
    runner = await start_runner(import_default_model=True, default_backend=backend)
    deltas, finished = await collect(
        runner, request("What is the capital of France?", model="smollm2", max_tokens=24)
    )
    assert "Paris" in finished.text
    assert "".join(deltas) == finished.text
    assert finished.finish_reason == generation_pb2.FINISH_REASON_STOP


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTMESH_RUNNER_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "agentmesh_runner", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_the_import_command(tiny_model: Path, tmp_path: Path) -> None:
    source = write_gguf(tiny_model, tmp_path / "Tiny Model.gguf")
    models = tmp_path / "models"
    done = run_cli("import-gguf", str(source), "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    assert "as 'tiny-model'" in done.stdout
    assert (models / "tiny-model" / "config.json").is_file()
    exists = run_cli("import-gguf", str(source), "--models-dir", str(models))
    assert exists.returncode == 1
    assert "[MODEL_EXISTS]" in exists.stderr
    forced = run_cli("import-gguf", str(source), "--models-dir", str(models), "--force")
    assert forced.returncode == 0, forced.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    failed = run_cli("import-gguf", str(bad), "--models-dir", str(models), "--name", "bad")
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1
    assert "[GGUF_INVALID]" in failed.stderr
    assert sorted(p.name for p in models.iterdir()) == ["tiny-model"]
