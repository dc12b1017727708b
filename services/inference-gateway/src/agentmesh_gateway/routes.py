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

    @property
    def needs_key(self) -> bool:
        return self.provider not in KEYLESS_PROVIDERS


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

    def deployments(self) -> list[Deployment]:
        seen: dict[tuple[str, str], Deployment] = {}
        for deployments in self.routes.values():
            for d in deployments:
                seen.setdefault((d.route, d.name), d)
        return list(seen.values())

    def tenant_limits(self, tenant: str) -> TenantLimits:
        return self.tenants.get(tenant, self.default_tenant)


class _DeploymentModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    provider: ProviderName
    model: str = Field(min_length=1)
    api_key_env: str | list[str] = Field(default_factory=list)
    api_key_file: str | list[str] = Field(default_factory=list)
    base_url: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=60.0, gt=0, le=3600)
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    weight: int = Field(default=1, ge=1, le=1000)
    priority: int = Field(default=0, ge=0)
    input_price_per_million: float = Field(default=0.0, ge=0)
    output_price_per_million: float = Field(default=0.0, ge=0)
    context_window: int = Field(default=0, ge=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    stream: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and "://" not in value and ":" not in value:
            raise ValueError("base_url must be an http(s) URL (or host:port for local)")
        return value


class _TenantModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: dict[str, list[_DeploymentModel]] = Field(min_length=1)
    tenants: dict[str, _TenantModel] = Field(default_factory=dict)
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_cooldown_seconds: float = Field(default=30.0, gt=0)
    max_retry_wait_seconds: float = Field(default=10.0, ge=0)

    @field_validator("routes")
    @classmethod
    def _non_empty(cls, value: dict[str, list[_DeploymentModel]]) -> Any:
        for name, deployments in value.items():
            if not deployments:
                raise ValueError(f"route {name!r} has no deployments")
        return value


def default_routes(runner_target: str) -> RouteTable:
    """No routes file: "default" (and its alias "local") is the local runner's tiny model."""
    deployments = {
        route: (Deployment(route, "local-tiny", "local", "tiny", base_url=runner_target),)
        for route in ("default", "local")
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
        parsed = _FileModel.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        raise RoutesFileError(f"{path}:{_line_for(lines, loc)}: {where}: {first['msg']}") from None

    routes: dict[str, tuple[Deployment, ...]] = {}
    names: dict[str, tuple[Any, ...]] = {}
    for route, items in parsed.routes.items():
        built: list[Deployment] = []
        for index, item in enumerate(items):
            loc = ("routes", route, index)
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
    )
