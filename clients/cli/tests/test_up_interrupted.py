"""`agentmesh up` interrupted in the window after the services started and before it serves
(while it creates the local API key): one clear line, and the services it started are stopped.

The end-to-end SIGTERM test in tests/e2e lands in this window only by chance; here the key
creation waits until the signal has come, so the window is hit every time."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from agentmesh_cli import up
from agentmesh_cli.shared import CliError


async def test_sigterm_while_the_local_key_is_made_stops_the_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = [object()]  # stands for the running services
    stopped: list[list[object]] = []
    key_requested = asyncio.Event()

    async def fake_start_mesh(*_args: object, **_kwargs: object) -> list[object]:
        return started

    async def slow_key(_running: object) -> str:
        key_requested.set()
        await asyncio.Event().wait()  # never answers: only the signal ends this
        raise AssertionError("unreachable")

    async def fake_stop_mesh(running: list[object]) -> None:
        stopped.append(running)

    monkeypatch.setattr(up, "start_mesh", fake_start_mesh)
    monkeypatch.setattr(up, "_create_local_key", slow_key)
    monkeypatch.setattr(up, "stop_mesh", fake_stop_mesh)

    starting = asyncio.create_task(up._up(tmp_path, None, None, None))
    try:
        await asyncio.wait_for(key_requested.wait(), timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop: it cancels the start
        with pytest.raises(CliError) as raised:
            await asyncio.wait_for(starting, timeout=10)
        assert str(raised.value) == "interrupted while starting; nothing is left running"
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    assert stopped == [started]
    assert not (tmp_path / "api-key").exists()
    assert not (tmp_path / "mesh.json").exists()
