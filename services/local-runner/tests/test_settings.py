"""Runner settings come from AGENTMESH_RUNNER_* variables, validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh_common import SettingsError, load_settings
from agentmesh_runner.settings import RunnerSettings


def test_settings_read_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        RunnerSettings,
        {
            "AGENTMESH_RUNNER_MODELS_DIR": str(tmp_path),
            "AGENTMESH_RUNNER_MODEL_BACKENDS": '{"big-gguf": "llama.cpp"}',
            "AGENTMESH_RUNNER_MAX_BATCH": "1",
            "AGENTMESH_RUNNER_CREATE_DEMO_MODEL": "false",
        },
    )
    assert settings.models_dir == tmp_path
    assert settings.model_backends == {"big-gguf": "llama.cpp"}
    assert settings.max_batch == 1
    assert not settings.create_demo_model
    assert settings.keep_alive_seconds == 300


def test_out_of_range_settings_are_refused() -> None:
    with pytest.raises(SettingsError, match="AGENTMESH_RUNNER_QUEUE_CAPACITY"):
        load_settings(RunnerSettings, {"AGENTMESH_RUNNER_QUEUE_CAPACITY": "0"})
