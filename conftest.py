"""Suite-wide guard: no test may reach a non-loopback host (no real LLM, no internet).

The guard is installed in the pytest process before any test module is imported, and
`AGENTMESH_LOOPBACK_ONLY=1` makes every service process the tests spawn install it too.
MLX and Hugging Face are kept offline and skip MLX's first-run compilation.
"""

from __future__ import annotations

import os

from agentmesh_common.netguard import ENV_VAR, install_loopback_only

os.environ[ENV_VAR] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
install_loopback_only()
