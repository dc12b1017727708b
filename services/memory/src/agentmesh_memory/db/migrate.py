"""Run the Alembic migrations from inside the service, and check the schema revision."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from agentmesh_common import FailedPrecondition

from .database import Database

__all__ = ["alembic_config", "ensure_schema", "head_revision", "migrate"]

SCRIPT_LOCATION = "agentmesh_memory:migrations"
# Any constant shared by all replicas: serializes their migrations on PostgreSQL.
_MIGRATION_LOCK = 0x6167_6D65_6D00  # "agmem"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the memory service has no migrations")
    return head


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(db: Database) -> None:
    """Upgrade the database to head (once, even when replicas start together)."""
    async with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            await conn.commit()
        try:
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            if db.dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
                await conn.commit()


async def ensure_schema(db: Database) -> None:
    """FAILED_PRECONDITION unless the database is at the head revision."""
    async with db.engine.connect() as conn:
        current = await conn.run_sync(_current)
    head = head_revision()
    if current != head:
        raise FailedPrecondition(
            f"the database schema is at revision {current or 'none'}, the service needs {head}: "
            "run `alembic upgrade head` (services/memory/alembic.ini) or set "
            "AGENTMESH_MEMORY_MIGRATE_ON_START=true",
            reason="SCHEMA_OUTDATED",
        )
