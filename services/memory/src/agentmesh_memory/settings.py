"""Settings of the memory service, read once from `AGENTMESH_MEMORY_*` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agentmesh_common import ServiceSettings

SUPPORTED_DRIVERS = frozenset({"sqlite+aiosqlite", "postgresql+asyncpg"})


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

    database_url: SecretStr = Field(
        default=SecretStr("sqlite+aiosqlite:///.data/agentmesh.db"),
        description="SQLAlchemy URL: sqlite+aiosqlite:///path (embedded) or "
        "postgresql+asyncpg://user:password@host/db (production). Secret: it may hold a "
        "password, so it is never logged or echoed in an error.",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Run the Alembic migrations to head before serving (under an advisory lock "
        "on PostgreSQL, so replicas starting together migrate once). When false, a database "
        "that is not at head stops the start with a clear message.",
    )
    pool_size: int = Field(default=10, ge=1, le=1000, description="Connections kept open.")
    max_overflow: int = Field(
        default=20, ge=0, le=1000, description="Extra connections opened under load."
    )
    pool_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Wait for a free connection before failing UNAVAILABLE."
    )
    pool_recycle_seconds: float = Field(
        default=1800.0, gt=0, description="Reopen connections older than this."
    )
    statement_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="PostgreSQL statement_timeout of every connection; on SQLite, how long a "
        "write waits for the database lock.",
    )
    health_check_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the database is pinged for the health status."
    )
    sweep_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often expired agent memory, memory beyond its agent's retention rules,"
        " old idempotency records (FireTransition outcomes too) and the run records of ended"
        " scheduled sessions are deleted.",
    )
    max_document_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        le=512 * 1024 * 1024,
        description="Largest document UploadDocument accepts, in bytes (INVALID_ARGUMENT above).",
    )
    request_id_retention_seconds: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="How long a request_id keeps answering with the original result.",
    )
    watch_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="WatchEvents re-reads the log at least this often even without a "
        "notification (a safety net; notifications normally wake watchers at once).",
    )

    @field_validator("database_url")
    @classmethod
    def _supported_url(cls, value: SecretStr) -> SecretStr:
        try:
            url = make_url(value.get_secret_value())
        except ArgumentError:
            raise ValueError("not a database URL") from None
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                "use sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db, not "
                f"{url.drivername}"
            )
        return value
