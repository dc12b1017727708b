"""Composition root of the memory service: settings, resources and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

from agentmesh.memory.v1 import memory_pb2_grpc
from agentmesh_common import Registration, Telemetry

from .servicer import MemoryServicer
from .settings import MemorySettings

SERVICE_NAME = "memory"
GRPC_SERVICE = "agentmesh.memory.v1.MemoryService"


async def build(
    stack: AsyncExitStack, settings: MemorySettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    servicer = MemoryServicer()
    return [
        Registration(
            GRPC_SERVICE, partial(memory_pb2_grpc.add_MemoryServiceServicer_to_server, servicer)
        )
    ]
