"""Settings of the memory service, read once from `AGENTMESH_MEMORY_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings


class MemorySettings(ServiceSettings):
    """Typed settings of the memory service."""

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_MEMORY_", extra="ignore", frozen=True)

    port: int = Field(default=50054, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free one; none/off/empty disables it.",
    )

    database_url: str = Field(
        default="sqlite+aiosqlite:///.data/agentmesh.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path (embedded) or "
        "postgresql+asyncpg://user@host/db (production).",
    )
