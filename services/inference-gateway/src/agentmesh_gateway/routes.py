"""The routes file: route name -> ordered deployments, validated at start with file:line.

Keys are read here, once, from environment variables or mounted files, and kept only in
:class:`Secret` objects whose ``repr`` never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

LOCAL_PROVIDERS = frozenset({"local", "ollama"})
PROVIDERS = ("openai", "anthropic", "gemini", "xai", "groq", "ollama", "openai_compatible", "local")
KEYLESS_PROVIDERS = frozenset({"ollama", "openai_compatible", "local"})
ProviderName = Literal[
    "openai", "anthropic", "gemini", "xai", "groq", "ollama", "openai_compatible", "local"
]


class RoutesFileError(Exception):
    """The routes file is invalid: the message names the file, the line and the reason."""


class Secret:
    """An API key; ``str``/``repr`` never reveal it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__


@dataclass(frozen=True)
class Deployment:
    """One provider/model/endpoint of a route, with its limits and prices."""

    route: str
    name: str
    provider: str
    model: str
    base_url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    keys: tuple[Secret, ...] = ()
    key_sources: tuple[str, ...] = ()  # env var names / file paths, for status messages
    timeout: float = 60.0
    rpm: int = 0
    tpm: int = 0
    weight: int = 1
    priority: int = 0
    input_price_micros_per_million: int = 0
    output_price_micros_per_million: int = 0
    context_window: int = 0
    max_retries: int = 2
    stream: bool = True
    locality: Literal["local", "online"] = "online"

    @property
    def needs_key(self) -> bool:
        return self.provider not in KEYLESS_PROVIDERS


@dataclass(frozen=True)
class CachePolicy:
    """A route's response cache: how long an answer is kept, and for which requests."""

    ttl_seconds: float
    deterministic_only: bool = True


@dataclass(frozen=True)
class TenantLimits:
    rpm: int = 0
    tpm: int = 0


@dataclass(frozen=True)
class RouteTable:
    routes: Mapping[str, tuple[Deployment, ...]]
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)
    default_tenant: TenantLimits = field(default_factory=TenantLimits)
    circuit_failure_threshold: int = 5
    circuit_cooldown_seconds: float = 30.0
    max_retry_wait_seconds: float = 10.0
    caches: Mapping[str, CachePolicy] = field(default_factory=dict)

    def deployments(self) -> list[Deployment]:
        seen: dict[tuple[str, str], Deployment] = {}
        for deployments in self.routes.values():
            for d in deployments:
                seen.setdefault((d.route, d.name), d)
        return list(seen.values())

    def tenant_limits(self, tenant: str) -> TenantLimits:
        return self.tenants.get(tenant, self.default_tenant)


class DeploymentSpec(BaseModel):
    """One deployment of a route in the routes file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description='Unique name; defaults to "<route>-<index>".')
    provider: ProviderName = Field(
        description="openai, anthropic, gemini, xai, groq, ollama, openai_compatible or local."
    )
    model: str = Field(min_length=1, description="Model name as the provider knows it.")
    api_key_env: str | list[str] = Field(
        default_factory=list,
        description="Environment variable(s) holding API keys; several are rotated.",
    )
    api_key_file: str | list[str] = Field(
        default_factory=list, description="Mounted secret file(s) holding API keys."
    )
    base_url: str = Field(
        default="",
        description="Provider URL (default: its public endpoint); host:port for local.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every request."
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds to connect and to wait for each chunk (local: for each event).",
    )
    rpm: int = Field(default=0, ge=0, description="Requests per minute allowed; 0: no limit.")
    tpm: int = Field(default=0, ge=0, description="Tokens per minute allowed; 0: no limit.")
    weight: int = Field(
        default=1, ge=1, le=1000, description="Share of load among deployments of one priority."
    )
    priority: int = Field(default=0, ge=0, description="Lower is tried first; higher: fallback.")
    input_price_per_million: float = Field(
        default=0.0, ge=0, description="USD per million prompt tokens (for cost)."
    )
    output_price_per_million: float = Field(
        default=0.0, ge=0, description="USD per million completion tokens (for cost)."
    )
    context_window: int = Field(
        default=0,
        ge=0,
        description="Context window in tokens; context-length errors fall back to a larger one.",
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries on this deployment before falling back."
    )
    stream: bool = Field(
        default=True, description="Stream the response; false: one request, replayed as events."
    )
    locality: Literal["local", "online"] | None = Field(
        default=None,
        description="Where the model runs, for users' local/online preference: local or"
        " online (default: local for the local and ollama providers, online otherwise, e.g. an"
        " openai_compatible server on your own hardware is marked local here).",
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and "://" not in value and ":" not in value:
            raise ValueError("base_url must be an http(s) URL (or host:port for local)")
        return value


class CacheSpec(BaseModel):
    """A route's response cache (under a route's `cache`)."""

    model_config = ConfigDict(extra="forbid")
    ttl_seconds: float = Field(gt=0, le=30 * 86400, description="How long an answer is kept.")
    deterministic_only: bool = Field(
        default=True,
        description="Cache only requests with temperature 0 or a seed; false: every request.",
    )


class RouteSpec(BaseModel):
    """A route written as a mapping (instead of a bare list of deployments)."""

    model_config = ConfigDict(extra="forbid")
    deployments: list[DeploymentSpec] = Field(
        min_length=1, description="The route's deployments, in fallback order."
    )
    cache: CacheSpec | None = Field(
        default=None, description="Opt in to the response cache; unset: never cached."
    )


class TenantSpec(BaseModel):
    """Per-tenant limits in the routes file."""

    model_config = ConfigDict(extra="forbid")
    rpm: int = Field(default=0, ge=0, description="Requests per minute; 0: no limit.")
    tpm: int = Field(default=0, ge=0, description="Tokens per minute; 0: no limit.")


class RoutesFileSpec(BaseModel):
    """The top level of the routes file."""

    model_config = ConfigDict(extra="forbid")

    routes: dict[str, RouteSpec] = Field(
        min_length=1,
        description="Route name to its deployments in fallback order (a list), or to a"
        " mapping with `deployments` and `cache`.",
    )
    tenants: dict[str, TenantSpec] = Field(
        default_factory=dict, description="Per-tenant limits; key `default` applies to others."
    )
    circuit_failure_threshold: int = Field(
        default=5, ge=1, description="Failures in a row that open a deployment's circuit."
    )
    circuit_cooldown_seconds: float = Field(
        default=30.0, gt=0, description="How long an open circuit skips its deployment."
    )
    max_retry_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        description="A provider retry hint longer than this falls back instead of waiting.",
    )

    @field_validator("routes", mode="before")
    @classmethod
    def _lists_are_routes(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name, route in value.items():
            if isinstance(route, list) and not route:
                raise ValueError(f"route {name!r} has no deployments")
        return {
            name: {"deployments": route} if isinstance(route, list) else route
            for name, route in value.items()
        }


def default_routes(runner_target: str) -> RouteTable:
    """No routes file: "default" (and its alias "local") is the local runner's real model,
    SmolLM2-135M-Instruct; "tiny" is the random demo model (tests, benchmarks)."""
    models = {"default": "smollm2", "local": "smollm2", "tiny": "tiny"}
    deployments = {
        route: (
            Deployment(
                route, f"local-{model}", "local", model, base_url=runner_target, locality="local"
            ),
        )
        for route, model in models.items()
    }
    return RouteTable(routes=deployments)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _line_index(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_index(item, (*path, index), out)


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for end in range(len(loc), -1, -1):
        key = tuple(str(p) if isinstance(p, str) else p for p in loc[:end])
        if key in lines:
            return lines[key]
    return 1


def load_routes(path: Path, environ: Mapping[str, str] | None = None) -> RouteTable:
    """Parse and validate ``path``; raises :class:`RoutesFileError` naming file and line."""
    env = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except OSError as exc:
        raise RoutesFileError(f"{path}: cannot read the routes file: {exc.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise RoutesFileError(f"{path}:{line}: invalid YAML: {problem}") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    try:
        parsed = RoutesFileSpec.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _as_written(tuple(first["loc"]), data)
        where = ".".join(str(p) for p in loc) or "(top level)"
        raise RoutesFileError(f"{path}:{_line_for(lines, loc)}: {where}: {first['msg']}") from None

    routes: dict[str, tuple[Deployment, ...]] = {}
    caches: dict[str, CachePolicy] = {}
    names: dict[str, tuple[Any, ...]] = {}
    for route, spec in parsed.routes.items():
        if spec.cache is not None:
            caches[route] = CachePolicy(spec.cache.ttl_seconds, spec.cache.deterministic_only)
        built: list[Deployment] = []
        for index, item in enumerate(spec.deployments):
            loc = _as_written(("routes", route, "deployments", index), data)
            name = item.name or f"{route}-{index}"
            previous = names.get(name)
            if previous is not None and previous != (item.provider, item.model, item.base_url):
                raise RoutesFileError(
                    f"{path}:{_line_for(lines, (*loc, 'name'))}: deployment name {name!r} "
                    "is used twice for different deployments"
                )
            names[name] = (item.provider, item.model, item.base_url)
            keys: list[Secret] = []
            sources: list[str] = []
            for var in _as_list(item.api_key_env):
                sources.append(f"env:{var}")
                value = env.get(var, "").strip()
                if value:
                    keys.append(Secret(value))
            for file in _as_list(item.api_key_file):
                sources.append(f"file:{file}")
                try:
                    value = Path(file).read_text().strip()
                except OSError:
                    raise RoutesFileError(
                        f"{path}:{_line_for(lines, (*loc, 'api_key_file'))}: "
                        f"cannot read api_key_file {file!r}"
                    ) from None
                if value:
                    keys.append(Secret(value))
            built.append(
                Deployment(
                    route=route,
                    name=name,
                    provider=item.provider,
                    model=item.model,
                    base_url=item.base_url,
                    headers=dict(item.headers),
                    keys=tuple(keys),
                    key_sources=tuple(sources),
                    timeout=item.timeout,
                    rpm=item.rpm,
                    tpm=item.tpm,
                    weight=item.weight,
                    priority=item.priority,
                    input_price_micros_per_million=round(item.input_price_per_million * 1e6),
                    output_price_micros_per_million=round(item.output_price_per_million * 1e6),
                    context_window=item.context_window,
                    max_retries=item.max_retries,
                    stream=item.stream,
                    locality=item.locality
                    or ("local" if item.provider in LOCAL_PROVIDERS else "online"),
                )
            )
        routes[route] = tuple(built)
    tenants = {name: TenantLimits(t.rpm, t.tpm) for name, t in parsed.tenants.items()}
    return RouteTable(
        routes=routes,
        tenants=tenants,
        default_tenant=tenants.get("default", TenantLimits()),
        circuit_failure_threshold=parsed.circuit_failure_threshold,
        circuit_cooldown_seconds=parsed.circuit_cooldown_seconds,
        max_retry_wait_seconds=parsed.max_retry_wait_seconds,
        caches=caches,
    )


def _as_written(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """``loc`` as the file spells it: a route written as a list has no ``deployments`` key."""
    if (
        len(loc) > 2
        and loc[0] == "routes"
        and loc[2] == "deployments"
        and isinstance(data, dict)
        and isinstance(data.get("routes"), dict)
        and isinstance(data["routes"].get(loc[1]), list)
    ):
        return (*loc[:2], *loc[3:])
    return loc
