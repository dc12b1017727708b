"""A blocking facade over `AgentmeshClient`, for scripts and notebooks.

    from agentmesh_client.sync import SyncAgentmeshClient

    with SyncAgentmeshClient("127.0.0.1:50051", api_key="am_...") as mesh:
        session = mesh.create_session(goal="Plan a picnic")
        for event in mesh.run(session.name):
            print(event.seq, event.WhichOneof("payload"))

Every method of the async client is here under the same name and arguments; a call blocks
until its answer (within the client's deadline), and the event streams (`run`, `step`,
`execute`, `events`, `list_agents`, `list_sessions`) are plain iterators that resume after a
dropped connection just as the async ones do. Errors are the same typed classes
(`agentmesh_client.errors`).

The async client runs on an event loop of its own, in a daemon thread this object owns, so the
facade also works where a loop is already running (Jupyter) and never touches the caller's.
Ctrl-C (KeyboardInterrupt) during a call cancels that call. `close()` (or leaving the `with`
block) closes the channel and stops the thread; calling it twice is safe.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from .client import AgentmeshClient

__all__ = ["SyncAgentmeshClient"]

P = ParamSpec("P")
R = TypeVar("R")


class _LoopThread:
    """An event loop running in a daemon thread; `call` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="agentmesh-sync-client", daemon=True
        )
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, R]) -> R:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt here: do not leave the call running
            raise

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _blocking(
    method: Callable[Concatenate[AgentmeshClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SyncAgentmeshClient, P], R]:
    def call(self: SyncAgentmeshClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.call(method(self._client, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _iterating(
    method: Callable[Concatenate[AgentmeshClient, P], AsyncIterator[R]],
) -> Callable[Concatenate[SyncAgentmeshClient, P], Iterator[R]]:
    def call(self: SyncAgentmeshClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        stream = method(self._client, *args, **kwargs)
        return self._iterate(stream)

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class SyncAgentmeshClient:
    """`AgentmeshClient` with blocking calls and plain iterators (see the module docstring)."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect_attempts: int = 8,
    ) -> None:
        self._loop = _LoopThread()

        async def connect() -> AgentmeshClient:
            # A grpc.aio channel belongs to the loop it is made on: make it on ours.
            return AgentmeshClient(
                target,
                api_key=api_key,
                timeout=timeout,
                credentials=credentials,
                reconnect_attempts=reconnect_attempts,
            )

        self._client = self._loop.call(connect())
        self._closed = False

    def __enter__(self) -> SyncAgentmeshClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the client's thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.call(self._client.close())
        finally:
            self._loop.stop()

    def _iterate(self, stream: AsyncIterator[R]) -> Iterator[R]:
        iterator = stream.__aiter__()

        async def next_item() -> tuple[bool, R | None]:
            try:
                return True, await iterator.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._loop.call(next_item())
                if not more:
                    return
                yield item  # type: ignore[misc]  # R when more is True
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None and not self._closed:
                self._loop.call(close())

    # agents
    create_agent = _blocking(AgentmeshClient.create_agent)
    get_agent = _blocking(AgentmeshClient.get_agent)
    list_agents = _iterating(AgentmeshClient.list_agents)
    update_agent = _blocking(AgentmeshClient.update_agent)
    delete_agent = _blocking(AgentmeshClient.delete_agent)
    # sessions and their events
    create_session = _blocking(AgentmeshClient.create_session)
    add_agent = _blocking(AgentmeshClient.add_agent)
    run = _iterating(AgentmeshClient.run)
    step = _iterating(AgentmeshClient.step)
    execute = _iterating(AgentmeshClient.execute)
    events = _iterating(AgentmeshClient.events)
    send_message = _blocking(AgentmeshClient.send_message)
    cancel_session = _blocking(AgentmeshClient.cancel_session)
    end_session = _blocking(AgentmeshClient.end_session)
    approve_tool_call = _blocking(AgentmeshClient.approve_tool_call)
    reject_tool_call = _blocking(AgentmeshClient.reject_tool_call)
    get_session = _blocking(AgentmeshClient.get_session)
    create_stream_token = _blocking(AgentmeshClient.create_stream_token)
    list_sessions = _iterating(AgentmeshClient.list_sessions)
    # memory, settings, tools, models, usage
    put_memory = _blocking(AgentmeshClient.put_memory)
    get_memory = _blocking(AgentmeshClient.get_memory)
    list_memories = _blocking(AgentmeshClient.list_memories)
    delete_memory = _blocking(AgentmeshClient.delete_memory)
    get_user_settings = _blocking(AgentmeshClient.get_user_settings)
    update_user_settings = _blocking(AgentmeshClient.update_user_settings)
    create_tool_server = _blocking(AgentmeshClient.create_tool_server)
    list_tool_servers = _blocking(AgentmeshClient.list_tool_servers)
    delete_tool_server = _blocking(AgentmeshClient.delete_tool_server)
    list_tools = _blocking(AgentmeshClient.list_tools)
    list_models = _blocking(AgentmeshClient.list_models)
    provider_status = _blocking(AgentmeshClient.provider_status)
    usage = _blocking(AgentmeshClient.usage)
    # knowledge and statistics
    create_collection = _blocking(AgentmeshClient.create_collection)
    get_collection = _blocking(AgentmeshClient.get_collection)
    list_collections = _blocking(AgentmeshClient.list_collections)
    delete_collection = _blocking(AgentmeshClient.delete_collection)
    upload_document = _blocking(AgentmeshClient.upload_document)
    get_document = _blocking(AgentmeshClient.get_document)
    list_documents = _blocking(AgentmeshClient.list_documents)
    delete_document = _blocking(AgentmeshClient.delete_document)
    search_documents = _blocking(AgentmeshClient.search_documents)
    search_memories = _blocking(AgentmeshClient.search_memories)
    memory_stats = _blocking(AgentmeshClient.memory_stats)
    agent_stats = _blocking(AgentmeshClient.agent_stats)
