"""gRPC servicer of the inference gateway: converts protos to domain calls and back.

RPCs that are not built yet are inherited from the generated base class, which raises
`NotImplementedError`; the shared error interceptor answers UNIMPLEMENTED naming the method.
"""

from __future__ import annotations

from agentmesh.inference.v1 import inference_pb2_grpc


class GatewayServicer(inference_pb2_grpc.InferenceServiceServicer):
    """`agentmesh.inference.v1.InferenceService`."""
