"""Composition root of the orchestrator: settings, resources and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

from agentmesh.orchestrator.v1 import orchestrator_pb2_grpc
from agentmesh_common import Registration, Telemetry

from .servicer import OrchestratorServicer
from .settings import OrchestratorSettings

SERVICE_NAME = "orchestrator"
GRPC_SERVICE = "agentmesh.orchestrator.v1.OrchestratorService"


async def build(
    stack: AsyncExitStack, settings: OrchestratorSettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    servicer = OrchestratorServicer()
    return [
        Registration(
            GRPC_SERVICE,
            partial(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, servicer),
        )
    ]
