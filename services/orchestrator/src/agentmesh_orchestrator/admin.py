"""`agentmesh-admin`: operator commands that talk to the memory service directly.

    agentmesh-admin create-key --tenant acme [--name "ci key"] [--memory 127.0.0.1:50054]

prints a new API key for the tenant (shown once; only its hash is stored). The memory service
is internal, so this runs where an operator can reach it (next to the mesh, or in a pod).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from collections.abc import Sequence

import grpc

from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY

TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


async def create_key(memory_target: str, tenant: str, name: str) -> memory_pb2.CreateApiKeyResponse:
    """Create an API key for `tenant` through the memory service at `memory_target`."""
    async with grpc.aio.insecure_channel(memory_target) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        return await stub.CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name=name, request_id=uuid.uuid4().hex),
            metadata=((TENANT_METADATA_KEY, tenant),),
            timeout=10,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentmesh-admin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-key", help="create an API key for a tenant")
    create.add_argument("--tenant", required=True, help="tenant id, e.g. acme")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--memory", default="127.0.0.1:50054", help="memory service address")
    args = parser.parse_args(argv)
    if not TENANT.fullmatch(args.tenant):
        print("error: --tenant must match [a-z0-9][a-z0-9_-]{0,62}", file=sys.stderr)
        return 2
    try:
        reply = asyncio.run(create_key(args.memory, args.tenant, args.name))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(reply.secret)
    print(f"created {reply.api_key.name} for tenant {args.tenant}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
