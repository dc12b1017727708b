"""Domain errors shared by every agentmesh service: the very classes of
:mod:`agentmesh_client.errors` (the slim client's), re-exported so that a service raising
``agentmesh_common.NotFound`` and a client catching ``agentmesh_client.errors.NotFound`` mean
one class. The hierarchy and its reasons are drawn in that module's docstring.
"""

from agentmesh_client.errors import *  # noqa: F403
from agentmesh_client.errors import __all__ as __all__
