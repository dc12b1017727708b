"""The agentmesh Python client (`client`), the `agentmesh` command line (`cli`) and the
embedded mesh launcher (`mesh`)."""

import os

# gRPC's C core logs transport events such as "Got goaway ... Server shutdown" to stderr at
# INFO; for a command line that promises one readable line per error, only its errors count.
# Set before `grpc` is first imported; an explicit GRPC_VERBOSITY wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
