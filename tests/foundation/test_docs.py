"""Every error reason a service raises is documented in docs/api.md with what to do about it.

Reasons are found in the services' code (`reason="..."` literals, and the gateway's upstream
failure kinds, raised as `reason=error.kind.value`), by the same code that writes the table.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_raised_reason_has_a_documented_row_with_guidance() -> None:
    gen_docs = _gen_docs()
    raised = gen_docs._reasons()
    assert {"CONNECT_ERROR", "RATE_LIMITED", "API_KEY_INVALID", "NO_ROUTE"} <= set(raised)
    api = (ROOT / "docs" / "api.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| [^|]* \| ([^|]*) \|$", api, re.M))
    undocumented = sorted(set(raised) - set(rows))
    assert not undocumented, f"reasons missing from docs/api.md (run `make docs`): {undocumented}"
    empty = sorted(reason for reason in raised if not rows[reason].strip())
    assert not empty, f"reasons without guidance in tools/gen_docs.py: {empty}"
