"""The seeded fuzzer (`fuzz.py`) against a real orchestrator process: every public RPC, a
request budget (5,000 in full; `AGENTMESH_CHAOS_SEED` picks the seed, default 16), 0 UNKNOWN
and 0 INTERNAL. Every answer is a status the API documents, or a stream's first events."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import Answer, Chat, start_e2e_mesh, stop_e2e_mesh
from tests.timing import scaled

from .fuzz import Method, mutate, plausible, public_methods
from .support import FIGURES, OUTCOMES, count

pytestmark = pytest.mark.slow

BUDGET = 5_000
CONCURRENCY = 8


def brief(_: Chat) -> Answer:
    return Answer(text="ok")


@pytest.mark.timeout(scaled(60 + count(BUDGET) * 0.1))
async def test_fuzzing_every_public_rpc_gives_no_unknown_and_no_internal(tmp_path: Path) -> None:
    seed = int(os.environ.get("AGENTMESH_CHAOS_SEED", "16"))
    rng = random.Random(seed)
    methods = public_methods()
    budget = count(BUDGET)
    mesh = await start_e2e_mesh(tmp_path, brief, runner=False)
    metadata = (("authorization", f"Bearer {mesh.api_key}"),)
    codes: Counter[str] = Counter()
    failures: list[str] = []
    # Every method at least once, then at random.
    plan = [
        methods[i % len(methods)] if i < len(methods) else rng.choice(methods)
        for i in range(budget)
    ]
    requests = [(method, *mutate(plausible(method.input, rng), rng)) for method in plan]
    gate = asyncio.Semaphore(CONCURRENCY)
    try:
        async with grpc.aio.insecure_channel(mesh.orchestrator.address) as channel:

            async def send(method: Method, kind: str, data: bytes) -> None:
                path = method.path
                async with gate:
                    code = await _call(channel, method, data, metadata)
                codes[code.name] += 1
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # the client's 10 s: which RPCs
                    OUTCOMES["fuzz DEADLINE_EXCEEDED (client's 10 s)"][path.rsplit("/", 1)[1]] += 1
                if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                    failures.append(f"{path} ({kind}): {code.name} {data[:80]!r}")

            await asyncio.gather(*(send(method, kind, data) for method, kind, data in requests))
    finally:
        await stop_e2e_mesh(mesh)
    FIGURES["fuzz requests"] += budget
    FIGURES["fuzz UNKNOWN"] += codes["UNKNOWN"]
    FIGURES["fuzz INTERNAL"] += codes["INTERNAL"]
    OUTCOMES["fuzz"].update(codes)
    assert not failures, "\n".join(failures[:30])


async def _call(
    channel: grpc.aio.Channel,
    method: Method,
    data: bytes,
    metadata: tuple[tuple[str, str], ...],
) -> grpc.StatusCode:
    """Send the raw request; the call's status (a stream: after its first few events; a client
    stream: the request as its only message, then the end of the stream)."""
    path = method.path
    try:
        if method.client_streaming:
            await channel.stream_unary(path)(iter([data]), metadata=metadata, timeout=10)
            return grpc.StatusCode.OK
        if method.server_streaming:
            call = channel.unary_stream(path)(data, metadata=metadata, timeout=10)
            try:
                for _ in range(3):
                    if await call.read() == grpc.aio.EOF:
                        break
            finally:
                call.cancel()
            code = await call.code()
            return grpc.StatusCode.OK if code == grpc.StatusCode.CANCELLED else code
        await channel.unary_unary(path)(data, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
