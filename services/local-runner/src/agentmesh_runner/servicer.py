"""gRPC servicer of the local runner: converts protos to domain calls and back.

RPCs that are not built yet are inherited from the generated base class, which raises
`NotImplementedError`; the shared error interceptor answers UNIMPLEMENTED naming the method.
"""

from __future__ import annotations

from agentmesh.runner.v1 import runner_pb2_grpc


class RunnerServicer(runner_pb2_grpc.LocalRunnerServiceServicer):
    """`agentmesh.runner.v1.LocalRunnerService`."""
