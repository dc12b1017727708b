"""The demo model command: deterministic bytes, fast, loadable by mlx-lm."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from agentmesh_runner.demo_model import DEMO_NOTICE, write_demo_model


def test_the_same_bytes_every_time_and_well_under_a_second(tmp_path: Path) -> None:
    started = time.perf_counter()
    first = write_demo_model(tmp_path / "a", "tiny")
    elapsed = time.perf_counter() - started
    second = write_demo_model(tmp_path / "b", "tiny")

    names = sorted(p.name for p in first.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert elapsed < 1.0


def test_tiny_config_is_a_small_llama_that_says_its_output_is_meaningless(
    tiny_model: Path,
) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert config["agentmesh_note"] == DEMO_NOTICE
    tokenizer_config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert "chat_template" in tokenizer_config
    assert tokenizer_config["eos_token"] == "<|end|>"


def test_command_line_writes_the_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh_runner.demo_model", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "meaningless" in result.stdout
    assert (tmp_path / "m" / "model.safetensors").is_file()
