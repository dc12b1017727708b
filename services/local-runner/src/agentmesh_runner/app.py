"""Composition root of the local runner: settings, resources and servicers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

from agentmesh.runner.v1 import runner_pb2_grpc
from agentmesh_common import Registration, Telemetry

from .servicer import RunnerServicer
from .settings import RunnerSettings

SERVICE_NAME = "local-runner"
GRPC_SERVICE = "agentmesh.runner.v1.LocalRunnerService"


async def build(
    stack: AsyncExitStack, settings: RunnerSettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    servicer = RunnerServicer()
    return [
        Registration(
            GRPC_SERVICE,
            partial(runner_pb2_grpc.add_LocalRunnerServiceServicer_to_server, servicer),
        )
    ]
