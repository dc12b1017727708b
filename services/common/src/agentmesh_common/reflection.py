"""Server reflection (v1 and v1alpha) and a health servicer that implements `List`.

Tools find the API through reflection: grpcurl and `buf curl` ask for
`grpc.reflection.v1.ServerReflection` first and fall back to v1alpha, and `describe` of a
method (`pkg.Service.Method`) asks for the file containing that symbol. grpcio-reflection
serves v1alpha only and its lookup misses method names (the descriptor pool resolves
services, messages, fields and enums, not methods). Here one servicer answers both versions
(their messages are the same on the wire: v1 is v1alpha renamed) and resolves a method
through its service. The v1 file itself is added to the descriptor pool, so reflection can
describe the reflection service too.

grpcio-health-checking's servicer leaves `Health/List` unimplemented; :class:`Health` answers
it from the statuses it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

__all__ = ["REFLECTION_SERVICE_NAMES", "Health", "enable_reflection"]

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICE_NAMES = (V1, V1ALPHA)


class _Reflection(ReflectionServicer):  # type: ignore[misc]
    def _file_containing_symbol(
        self, request: reflection_pb2.ServerReflectionRequest, fully_qualified_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        service_name, _, method = fully_qualified_name.rpartition(".")
        if service_name:
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                pass
            else:
                if method in service.methods_by_name:
                    fully_qualified_name = service_name
        return super()._file_containing_symbol(request, fully_qualified_name)


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Describe grpc/reflection/v1/reflection.proto in the pool: v1alpha's file renamed."""
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."

    def rename(messages: Any) -> None:
        for message in messages:
            for field in message.field:
                if field.type_name:
                    field.type_name = field.type_name.replace(old, new)
            rename(message.nested_type)

    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"
    file.ClearField("options")
    rename(file.message_type)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(file)


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha for `service_names` (plus the reflection services)."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = _Reflection([*service_names, *REFLECTION_SERVICE_NAMES])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": handler})]
    )


class Health(HealthServicer):  # type: ignore[misc]
    """The aio health servicer, with `List`: every service's status in one answer."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        reply = health_pb2.HealthListResponse()
        for service, status in list(self._server_status.items()):
            reply.statuses[service].status = status
        return reply
