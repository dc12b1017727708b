"""Alembic environment: runs the migrations on the service's database (async drivers).

Used two ways: by ``alembic upgrade head`` on its own (the URL from
``AGENTMESH_MEMORY_DATABASE_URL`` or ``-x url=...``), and by the service at start, which passes
its open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from agentmesh_memory.db.tables import METADATA, include_in_schema_comparison

DEFAULT_URL = "sqlite+aiosqlite:///.data/agentmesh.db"


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    return url or os.environ.get("AGENTMESH_MEMORY_DATABASE_URL") or DEFAULT_URL


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs via table copies
        compare_type=True,
        include_object=include_in_schema_comparison,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=METADATA, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = _url()
    if url.startswith("sqlite"):
        from pathlib import Path

        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
