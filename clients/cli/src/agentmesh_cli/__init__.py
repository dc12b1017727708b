"""The `agentmesh` command line (`cli`, one module per command group) and the embedded mesh
launcher (`mesh`) that `agentmesh up` and the test suite use."""

import os

# gRPC's C core logs transport events such as "Got goaway ... Server shutdown" to stderr at
# INFO; for a command line that promises one readable line per error, only its errors count.
# Set before `grpc` is first imported; an explicit GRPC_VERBOSITY wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
