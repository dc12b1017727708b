"""The agentmesh Python client: `AgentmeshClient` (async), `SyncAgentmeshClient` (blocking, for
scripts and notebooks) and the typed errors of `agentmesh_client.errors`.

Depends only on grpcio, protobuf, googleapis-common-protos and the generated `agentmesh`
package; the command line is the separate `agentmesh-cli` package.
"""

from . import errors
from .client import AgentmeshClient
from .errors import AgentmeshError
from .sync import SyncAgentmeshClient

__all__ = ["AgentmeshClient", "AgentmeshError", "SyncAgentmeshClient", "errors"]
