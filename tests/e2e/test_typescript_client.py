"""The TypeScript client (`clients/typescript`) against a running mesh, and as a package.

`node --test` runs the client's compiled tests with the mesh's target and API key: a
round-robin session seen whole and once, a connection cut mid-run and resumed from the last
seq, typed errors with their reasons and field violations, a deadline and an AbortSignal (and,
against a fake server on port 0, RetryInfo and retries). Then `npm pack` makes the tarball a
user would install, and it installs into an empty project and imports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import MeshUp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
]
ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
TSC = CLIENT / "node_modules" / ".bin" / "tsc"

# What a user's first lines would do with the installed tarball.
IMPORT_CHECK = """\
import { AgentmeshClient, InvalidArgument, OrchestratorService, Strategy } from "@agentmesh/client";
import { ErrorInfoSchema } from "@agentmesh/client/gen/google/rpc/error_details_pb";
import { createBrowserClient, NotFound } from "@agentmesh/client/browser";

const mesh = new AgentmeshClient("127.0.0.1:1", { apiKey: "k" });
const missing = OrchestratorService.methods.filter((m) => typeof mesh[m.localName] !== "function");
mesh.close();
const web = createBrowserClient({ baseUrl: "http://127.0.0.1:1", apiKey: "k" });
const absent = OrchestratorService.methods.filter((m) => typeof web[m.localName] !== "function");
console.log(JSON.stringify({
  browserMissing: absent.length,
  browserErrors: new NotFound({ code: 5, message: "x" }).codeName,
  missing: missing.length,
  strategy: Strategy.ROUND_ROBIN,
  error: new InvalidArgument({ code: 3, message: "x" }).codeName,
  info: ErrorInfoSchema.typeName,
}));
"""


def run(*args: str, cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def built() -> Path:
    """The client and its tests compiled from the current sources."""
    assert TSC.exists(), "run `make setup` (npm ci --prefix clients/typescript)"
    for project in (".", "test"):
        result = run(str(TSC), "-p", project, cwd=CLIENT, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    return CLIENT / "test-dist"


def test_the_node_tests_pass_against_the_mesh(mesh: MeshUp, built: Path) -> None:
    files = sorted(str(path) for path in built.glob("*.test.js"))
    assert len(files) >= 2
    result = run(
        "node",
        "--test",
        "--test-reporter=tap",
        *files,
        cwd=CLIENT,
        timeout=240,
        AGENTMESH_TARGET=mesh.target,
        AGENTMESH_API_KEY=mesh.api_key,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "# SKIP" not in out, "every test ran: the mesh's target and key reached them"
    passed = re.search(r"^# pass (\d+)$", out, re.MULTILINE)
    assert passed is not None, out
    assert int(passed.group(1)) >= 14, out
    assert re.search(r"^# fail 0$", out, re.MULTILINE), out
    for name in (
        "a connection cut mid-run is resumed from the last seq",
        "an empty goal is InvalidArgument naming session.goal",
        "a stream's deadline ends it with DeadlineExceeded",
        "aborting the signal cancels a running stream",
        "workflows: a token fires a transition and its events are followed from afterSeq",
    ):
        assert re.search(rf"^\s*ok \d+ - {re.escape(name)}", out, re.MULTILINE), f"{name!r} failed"


def test_npm_pack_gives_a_package_that_installs_and_imports(built: Path, tmp_path: Path) -> None:
    packed = run(
        "npm", "pack", "--json", "--pack-destination", str(tmp_path), cwd=CLIENT, timeout=180
    )
    assert packed.returncode == 0, packed.stderr
    info = json.loads(packed.stdout)[0]
    names = {entry["path"] for entry in info["files"]}
    assert {"package.json", "README.md", "dist/index.js", "dist/index.d.ts"} <= names
    # The browser entry, and the same bundled into one ES module for pages without a bundler.
    assert {"dist/browser.js", "dist/browser.d.ts", "dist/agentmesh-client.browser.js"} <= names
    assert "dist/gen/google/rpc/error_details_pb.js" in names
    assert not [n for n in names if n.startswith(("src/", "test", "node_modules/"))], names

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}\n')
    installed = run(
        "npm",
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        str(tmp_path / info["filename"]),
        cwd=app,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    (app / "check.mjs").write_text(IMPORT_CHECK)
    imported = run("node", "check.mjs", cwd=app, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {
        "browserMissing": 0,
        "browserErrors": "NOT_FOUND",
        "missing": 0,
        "strategy": 3,
        "error": "INVALID_ARGUMENT",
        "info": "google.rpc.ErrorInfo",
    }
