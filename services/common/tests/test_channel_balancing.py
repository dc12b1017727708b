"""Channels spread calls over every address a target resolves to (client-side round-robin)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry.sdk.trace import TracerProvider

from agentmesh_common import create_channel


def _server_named(name: str) -> grpc.aio.Server:
    async def who(request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> StringValue:
        return StringValue(value=name)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.v1.Who",
                {
                    "Name": grpc.unary_unary_rpc_method_handler(
                        who,
                        request_deserializer=StringValue.FromString,
                        response_serializer=StringValue.SerializeToString,
                    )
                },
            )
        ]
    )
    return server


async def test_calls_are_spread_over_every_replica() -> None:
    servers = [_server_named("a"), _server_named("b")]
    ports = [server.add_insecure_port("127.0.0.1:0") for server in servers]
    for server in servers:
        await server.start()
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    channel = create_channel(target, tracer_provider=TracerProvider())
    try:
        call = channel.unary_unary(
            "/test.v1.Who/Name",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )
        answers = [(await call(StringValue())).value for _ in range(10)]
    finally:
        await channel.close()
        for server in servers:
            await server.stop(None)
    assert set(answers) == {"a", "b"}, f"a pick_first channel would answer from one: {answers}"


async def _call_while_the_peer_starts(*, retry_unavailable: bool) -> str:
    """Call a peer whose port is known but whose server is not listening yet (as services
    started side by side are); the server starts once the call's first attempt has failed."""
    probe = _server_named("early")
    port = probe.add_insecure_port("127.0.0.1:0")  # reserve a free port, then free it
    channel = create_channel(
        f"127.0.0.1:{port}", tracer_provider=TracerProvider(), retry_unavailable=retry_unavailable
    )
    server = _server_named("late")
    server.add_insecure_port(f"127.0.0.1:{port}")
    call = channel.unary_unary(
        "/test.v1.Who/Name",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )
    answer = asyncio.ensure_future(call(StringValue(), timeout=20))
    try:
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.TRANSIENT_FAILURE and not answer.done():
            await asyncio.wait_for(channel.wait_for_state_change(state), 10)
            state = channel.get_state()
        await server.start()
        return (await answer).value
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_peer_that_is_still_starting_is_waited_for_where_calls_may_be_repeated() -> None:
    assert await _call_while_the_peer_starts(retry_unavailable=False) == "UNAVAILABLE"
    assert await _call_while_the_peer_starts(retry_unavailable=True) == "late"
