"""Composition root of the inference gateway: settings, resources and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

from agentmesh.inference.v1 import inference_pb2_grpc
from agentmesh_common import Registration, Telemetry

from .servicer import GatewayServicer
from .settings import GatewaySettings

SERVICE_NAME = "inference-gateway"
GRPC_SERVICE = "agentmesh.inference.v1.InferenceService"


async def build(
    stack: AsyncExitStack, settings: GatewaySettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    servicer = GatewayServicer()
    return [
        Registration(
            GRPC_SERVICE,
            partial(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer),
        )
    ]
