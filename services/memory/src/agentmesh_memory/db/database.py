"""The database handle: one async engine, its transactions, and their metrics.

``Database.write(operation)`` is one transaction that commits on success and rolls back on any
error, so a failed call leaves nothing half-written. On SQLite (one process owns the file)
writers are serialized in-process so that a transaction never fails on an upgrade to the
write lock; readers run concurrently against WAL snapshots. On PostgreSQL every connection
carries the configured ``statement_timeout``.

Errors of the driver are translated once, here: a pool or connection failure becomes
``Unavailable``, a statement timeout ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from prometheus_client import Histogram
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agentmesh_common import DeadlineExceeded, MetricFactory, Unavailable

__all__ = ["Database", "DatabaseOptions", "Dialect"]

Dialect = Literal["sqlite", "postgresql"]

_logger = logging.getLogger("agentmesh.memory.db")

_QUERY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


@dataclass(frozen=True)
class DatabaseOptions:
    """Connection pool and timeout settings."""

    pool_size: int = 10
    max_overflow: int = 20
    pool_timeout_seconds: float = 10.0
    pool_recycle_seconds: float = 1800.0
    statement_timeout_seconds: float = 10.0


class _DbMetrics:
    def __init__(self, metrics: MetricFactory) -> None:
        self.operation: Histogram = metrics.histogram(
            "memory_db_operation_seconds",
            "Time of one database transaction of the memory service, by operation.",
            ["operation", "outcome"],
            buckets=_QUERY_BUCKETS,
        )
        self.statement: Histogram = metrics.histogram(
            "memory_db_statement_seconds",
            "Time of one SQL statement, by kind (SELECT, INSERT, UPDATE, DELETE, ...).",
            ["kind"],
            buckets=_QUERY_BUCKETS,
        )
        self.pool_checked_out = metrics.gauge(
            "memory_db_pool_checked_out", "Connections in use by the memory service."
        )
        self.pool_size = metrics.gauge(
            "memory_db_pool_size", "Connections the pool keeps open (its configured size)."
        )
        self.pool_overflow = metrics.gauge(
            "memory_db_pool_overflow", "Connections open beyond the pool size."
        )


class Database:
    """An async engine and its transactions; create with :meth:`open`, end with :meth:`close`."""

    def __init__(
        self, engine: AsyncEngine, url: URL, options: DatabaseOptions, metrics: MetricFactory
    ) -> None:
        self.engine = engine
        self.url = url
        self.options = options
        self.dialect: Dialect = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._metrics = _DbMetrics(metrics)
        self._probes: set[asyncio.Future[None]] = set()
        self._open_transactions = 0
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._instrument()

    @classmethod
    def open(
        cls, url: str | URL, options: DatabaseOptions | None = None, *, metrics: MetricFactory
    ) -> Database:
        """Build the engine for ``url`` (connections are opened lazily)."""
        options = options or DatabaseOptions()
        parsed = make_url(url) if isinstance(url, str) else url
        kwargs: dict[str, Any] = {
            "pool_size": options.pool_size,
            "max_overflow": options.max_overflow,
            "pool_timeout": options.pool_timeout_seconds,
            "pool_recycle": options.pool_recycle_seconds,
            "pool_pre_ping": True,
        }
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                from pathlib import Path

                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": options.statement_timeout_seconds}
            engine = create_async_engine(parsed, **kwargs)
            timeout_ms = int(options.statement_timeout_seconds * 1000)

            @event.listens_for(engine.sync_engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
                cursor.close()

        else:
            timeout_ms = int(options.statement_timeout_seconds * 1000)
            kwargs["connect_args"] = {
                "server_settings": {
                    "statement_timeout": str(timeout_ms),
                    "application_name": "agentmesh-memory",
                },
                # Client-side bound too, a little longer than the server's.
                "command_timeout": options.statement_timeout_seconds + 5,
                "timeout": options.pool_timeout_seconds,
            }
            engine = create_async_engine(parsed, **kwargs)
        return cls(engine, parsed, options, metrics)

    def _instrument(self) -> None:
        statement = self._metrics.statement
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            conn.info.setdefault("agentmesh_started", []).append(time.perf_counter())

        @event.listens_for(sync_engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            started = conn.info.get("agentmesh_started")
            if started:
                kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "OTHER"
                statement.labels(kind).observe(time.perf_counter() - started.pop())

        pool = sync_engine.pool
        self._metrics.pool_checked_out.set_function(lambda: float(_pool_stat(pool, "checkedout")))
        self._metrics.pool_size.set_function(lambda: float(_pool_stat(pool, "size")))
        self._metrics.pool_overflow.set_function(
            lambda: float(max(_pool_stat(pool, "overflow"), 0))
        )

    @asynccontextmanager
    async def write(self, operation: str) -> AsyncIterator[AsyncConnection]:
        """One read-write transaction; commits on success, rolls back on any error."""
        if self._write_lock is None:
            async with self._transaction(operation) as conn:
                yield conn
            return
        async with self._write_lock, self._transaction(operation) as conn:
            yield conn

    @asynccontextmanager
    async def read(self, operation: str) -> AsyncIterator[AsyncConnection]:
        """A read-only unit of work (a transaction that is rolled back)."""
        async with self._transaction(operation, commit=False) as conn:
            yield conn

    @asynccontextmanager
    async def _transaction(
        self, operation: str, *, commit: bool = True
    ) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        outcome = "ok"
        self._open_transactions += 1
        self._all_closed.clear()
        try:
            async with self.engine.connect() as conn:
                transaction = await conn.begin()
                try:
                    yield conn
                except BaseException:
                    outcome = "error"
                    await _quietly_rollback(transaction)
                    raise
                if commit:
                    await transaction.commit()
                else:
                    await transaction.rollback()
        except exc.TimeoutError as error:  # the pool had no free connection in time
            outcome = "error"
            raise Unavailable(
                "the database connection pool is exhausted", reason="DATABASE_BUSY", retry_after=1
            ) from error
        except (exc.OperationalError, exc.InterfaceError, OSError) as error:
            outcome = "error"
            raise _translate(error) from error
        except exc.DBAPIError as error:
            outcome = "error"
            if _is_statement_timeout(error):
                raise DeadlineExceeded(
                    "a database statement took too long", reason="DATABASE_TIMEOUT"
                ) from error
            raise
        finally:
            self._open_transactions -= 1
            if self._open_transactions == 0:
                self._all_closed.set()
            self._metrics.operation.labels(operation, outcome).observe(
                time.perf_counter() - started
            )

    async def ping(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the database answers ``SELECT 1`` within ``timeout`` seconds.

        The probe runs as its own task: a timeout (or cancelling the caller) leaves it to
        finish or fail by itself instead of abandoning a connection half-way.
        """
        probe = asyncio.ensure_future(self._select_one())
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)
        done, _ = await asyncio.wait({probe}, timeout=timeout)
        return bool(done) and not probe.cancelled() and probe.exception() is None

    async def _select_one(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        """Wait (bounded) for transactions still running, e.g. a read a cancelled watch
        shielded, so every connection is back in the pool, then dispose of the engine."""
        if self._probes:
            await asyncio.wait(self._probes, timeout=self.options.pool_timeout_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._all_closed.wait(), timeout=self.options.pool_timeout_seconds
            )
        await self.engine.dispose()


def _pool_stat(pool: Any, name: str) -> int:
    method = getattr(pool, name, None)
    try:
        return int(method()) if callable(method) else 0
    except Exception:
        return 0


async def _quietly_rollback(transaction: Any) -> None:
    try:
        if transaction.is_active:
            await transaction.rollback()
    except Exception:  # the connection may be gone; the original error matters more
        _logger.debug("rollback failed", exc_info=True)


def _is_statement_timeout(error: exc.DBAPIError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return sqlstate == "57014" or "statement timeout" in str(error.orig).lower()


def _translate(error: BaseException) -> Unavailable | DeadlineExceeded:
    if isinstance(error, exc.DBAPIError) and _is_statement_timeout(error):
        return DeadlineExceeded("a database statement took too long", reason="DATABASE_TIMEOUT")
    text = str(getattr(error, "orig", error)).lower()
    if "locked" in text or "busy" in text:
        return Unavailable("the database is busy", reason="DATABASE_BUSY", retry_after=1)
    return Unavailable("the database is unreachable", reason="DATABASE_UNAVAILABLE", retry_after=1)
