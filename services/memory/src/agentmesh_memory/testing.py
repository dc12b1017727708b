"""Real databases for tests and benchmarks: a PostgreSQL server and fresh migrated databases.

:func:`postgres_server` finds a PostgreSQL server, in this order:

1. ``AGENTMESH_TEST_POSTGRES_URL`` (``postgresql+asyncpg://user@host:port/db``; the database in
   it is only used to connect, tests create their own);
2. a server on ``127.0.0.1:5432`` accepting user ``postgres`` (or the current user) without
   a password;
3. a throwaway cluster started from the installed PostgreSQL binaries (``initdb``/``pg_ctl`` on
   ``PATH`` or under ``/usr/lib/postgresql/*/bin``) in a temporary directory, run as the
   ``postgres`` user when the caller is root, stopped and deleted by :meth:`PostgresServer.stop`.

:func:`fresh_database` creates a uniquely named database on it (dropped on exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.engine import URL, make_url

from agentmesh.memory.v1 import memory_pb2_grpc
from agentmesh_common import (
    AgentmeshError,
    ServiceServer,
    Telemetry,
    from_rpc_error,
    load_settings,
    serve,
)

from .app import SERVICE_NAME, build
from .settings import MemorySettings

__all__ = [
    "Api",
    "PostgresServer",
    "PostgresUnavailable",
    "RunningMemory",
    "fresh_database",
    "memory_settings",
    "pdf_document",
    "postgres_server",
    "rpc_error",
    "start_memory",
    "violation_fields",
]

ENV_URL = "AGENTMESH_TEST_POSTGRES_URL"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started."""


@dataclass
class PostgresServer:
    """A reachable server: an admin URL (``postgresql+asyncpg://``) and how to stop it."""

    url: URL
    how: str
    _cluster_dir: Path | None = None
    _run_as_postgres: bool = False
    _pg_ctl: str | None = None
    _extra: list[str] = field(default_factory=list)

    def database_url(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def stop(self) -> None:
        if self._cluster_dir is None or self._pg_ctl is None:
            return
        command = [self._pg_ctl, "-D", str(self._cluster_dir / "data"), "-m", "immediate", "stop"]
        with contextlib.suppress(Exception):
            subprocess.run(
                _as_postgres(command, self._run_as_postgres), capture_output=True, timeout=30
            )
        shutil.rmtree(self._cluster_dir, ignore_errors=True)
        self._cluster_dir = None


async def _can_connect(url: URL) -> bool:
    import asyncpg  # type: ignore[import-untyped]

    try:
        conn = await asyncpg.connect(
            url.set(drivername="postgresql").render_as_string(hide_password=False), timeout=3
        )
    except Exception:
        return False
    await conn.close()
    return True


def _binaries() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{folder}/initdb") and os.path.exists(f"{folder}/pg_ctl"):
            return f"{folder}/initdb", f"{folder}/pg_ctl"
    return None


def _as_postgres(command: list[str], run_as_postgres: bool) -> list[str]:
    if not run_as_postgres:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *command]
    return ["su", "postgres", "-c", " ".join(command)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_cluster() -> PostgresServer:
    found = _binaries()
    if found is None:
        raise PostgresUnavailable("no PostgreSQL binaries (initdb, pg_ctl) are installed")
    initdb, pg_ctl = found
    run_as_postgres = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="agentmesh-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if run_as_postgres:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        base.chmod(0o755)
    port = _free_port()
    user = "postgres" if run_as_postgres else getpass.getuser()
    steps = [
        [initdb, "-D", str(data), "-U", user, "--auth=trust", "--encoding=UTF8", "--no-sync"],
        [
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        ],
    ]
    for step in steps:
        result = subprocess.run(
            _as_postgres(step, run_as_postgres), capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            raise PostgresUnavailable(
                f"{Path(step[0]).name} failed: {(result.stderr or result.stdout).strip()[-500:]}"
            )
    url = URL.create(
        "postgresql+asyncpg", username=user, host="127.0.0.1", port=port, database="postgres"
    )
    return PostgresServer(url, "throwaway cluster", base, run_as_postgres, pg_ctl)


def postgres_server() -> PostgresServer:
    """Find or start a server (see the module docstring); raises PostgresUnavailable."""
    explicit = os.environ.get(ENV_URL)
    if explicit:
        url = make_url(explicit)
        if not asyncio.run(_can_connect(url)):
            raise PostgresUnavailable(f"{ENV_URL} is set but the server does not answer")
        return PostgresServer(url, ENV_URL)
    for user in dict.fromkeys(("postgres", getpass.getuser())):
        url = URL.create(
            "postgresql+asyncpg", username=user, host="127.0.0.1", port=5432, database="postgres"
        )
        if asyncio.run(_can_connect(url)):
            return PostgresServer(url, "127.0.0.1:5432")
    return _start_cluster()


async def _admin(server: PostgresServer, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        server.url.set(drivername="postgresql").render_as_string(hide_password=False), timeout=10
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server: PostgresServer, prefix: str = "agentmesh_test") -> str:
    """Create a uniquely named empty database; returns its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    return server.database_url(name)


def drop_database(server: PostgresServer, url: str) -> None:
    name = make_url(url).database
    with contextlib.suppress(Exception):
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def fresh_database(server: PostgresServer, prefix: str = "agentmesh_test") -> Iterator[str]:
    url = create_database(server, prefix)
    try:
        yield url
    finally:
        drop_database(server, url)


@contextlib.asynccontextmanager
async def afresh_database(
    server: PostgresServer, prefix: str = "agentmesh_test"
) -> AsyncIterator[str]:
    url = await asyncio.to_thread(create_database, server, prefix)
    try:
        yield url
    finally:
        await asyncio.to_thread(drop_database, server, url)


# The service under test ---------------------------------------------------------------


def memory_settings(database_url: str, **overrides: str) -> MemorySettings:
    env = {
        "AGENTMESH_MEMORY_PORT": "0",
        "AGENTMESH_MEMORY_METRICS_PORT": "off",
        "AGENTMESH_MEMORY_DATABASE_URL": database_url,
        "AGENTMESH_MEMORY_MIGRATE_ON_START": "false",
        "AGENTMESH_MEMORY_GRACE_SECONDS": "1",
        "AGENTMESH_MEMORY_HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
    }
    env.update({f"AGENTMESH_MEMORY_{k.upper()}": v for k, v in overrides.items()})
    return load_settings(MemorySettings, env)


@dataclass
class RunningMemory:
    """A memory server running in this process on port 0."""

    server: ServiceServer
    telemetry: Telemetry
    stop: Callable[[], Awaitable[None]]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


async def start_memory(settings: MemorySettings) -> RunningMemory:
    telemetry = Telemetry(service_name=SERVICE_NAME, tracer_provider=TracerProvider())
    stop = asyncio.Event()
    started: asyncio.Future[ServiceServer] = asyncio.get_running_loop().create_future()

    def on_started(server: ServiceServer, _metrics_port: int | None) -> None:
        started.set_result(server)

    task = asyncio.create_task(
        serve(SERVICE_NAME, settings, build, telemetry=telemetry, stop=stop, on_started=on_started)
    )
    waiting: list[asyncio.Future[Any]] = [task, started]
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start failure
    server = started.result()

    async def shutdown() -> None:
        stop.set()
        await task

    return RunningMemory(server, telemetry, shutdown)


class Api:
    """The generated stub, with the tenant metadata and a deadline added to every call."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        tenant: str,
        stub: Callable[[grpc.aio.Channel], Any] = memory_pb2_grpc.MemoryServiceStub,
    ) -> None:
        self.channel = channel
        self.tenant = tenant
        self._stub_type = stub
        self._stub = stub(channel)

    def as_tenant(self, tenant: str) -> Api:
        return Api(self.channel, tenant, self._stub_type)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        callable_ = getattr(self._stub, method)
        metadata = (("x-agentmesh-tenant", self.tenant),)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", metadata)
            if not method.startswith("Watch"):
                kwargs.setdefault("timeout", 30)
            return callable_(request, **kwargs)

        return call


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> AgentmeshError:
    """Await a call that must fail with ``code``; returns the typed error (with details)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() != code:
            raise AssertionError(
                f"expected {code.name}, got {error.code().name}: {error.details()}"
            ) from error
        return from_rpc_error(error)
    raise AssertionError(f"the call succeeded; expected {code.name}")


def violation_fields(error: AgentmeshError) -> set[str]:
    return {v.field for v in getattr(error, "violations", ())}


def pdf_document(pages: list[str], title: str = "") -> bytes:
    """A real PDF with a text layer: one page per string, each line a line of Helvetica text.

    Built with pypdf's objects (the same library that reads uploads), so tests need no PDF
    files from elsewhere.
    """
    import io

    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    def escaped(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    writer = PdfWriter()
    font = writer._add_object(  # a standard font: no font file needed
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        lines = " ".join(f"({escaped(line)}) Tj T*" for line in text.split("\n"))
        content = DecodedStreamObject()
        content.set_data(f"BT /F1 11 Tf 13 TL 54 740 Td {lines} ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(content)
    if title:
        writer.add_metadata({"/Title": title})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
