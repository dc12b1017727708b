"""gRPC servicer of the orchestrator: converts protos to domain calls and back.

RPCs that are not built yet are inherited from the generated base class, which raises
`NotImplementedError`; the shared error interceptor answers UNIMPLEMENTED naming the method.
"""

from __future__ import annotations

from agentmesh.orchestrator.v1 import orchestrator_pb2_grpc


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """`agentmesh.orchestrator.v1.OrchestratorService`."""
