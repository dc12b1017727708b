"""gRPC servicer of the memory service: converts protos to domain calls and back.

RPCs that are not built yet are inherited from the generated base class, which raises
`NotImplementedError`; the shared error interceptor answers UNIMPLEMENTED naming the method.
"""

from __future__ import annotations

from agentmesh.memory.v1 import memory_pb2_grpc


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """`agentmesh.memory.v1.MemoryService`."""
