"""Typed service settings, read from the environment once at start.

Each service subclasses :class:`ServiceSettings` with its own prefix and defaults::

    class MemorySettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="AGENTMESH_MEMORY_")
        port: int = Field(default=50053, description="gRPC port.")

and loads it with ``load_settings(MemorySettings)``. A bad value raises
:class:`SettingsError` whose message is one line naming the variable::

    invalid setting AGENTMESH_MEMORY_PORT='abc': Input should be a valid integer, ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, FilePath, SecretBytes, SecretStr, ValidationError, field_validator
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as _PydanticSettingsError

__all__ = ["LogLevel", "ServiceSettings", "SettingsError", "load_settings"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_DISABLED = frozenset({"", "none", "off", "disabled"})


class SettingsError(Exception):
    """Settings failed validation; ``str(error)`` is one line naming each bad variable."""


class ServiceSettings(BaseSettings):
    """Settings every agentmesh service has; subclasses set ``env_prefix`` and defaults."""

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_", extra="ignore", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        description="Address the gRPC and metrics servers bind to (0.0.0.0 in containers).",
    )
    port: int = Field(
        default=0, ge=0, le=65535, description="gRPC port; 0 picks a free port (tests)."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free port; none/off/empty disables it.",
    )
    grace_seconds: float = Field(
        default=10.0,
        gt=0,
        description="On SIGTERM, how long in-flight RPCs may run before they are cancelled.",
    )
    shutdown_notice_seconds: float = Field(
        default=0.0,
        ge=0,
        description=(
            "On SIGTERM, keep accepting RPCs this long after reporting NOT_SERVING so health"
            " pollers and load balancers move traffic away before the port closes."
        ),
    )
    log_level: LogLevel = Field(default="INFO", description="Root log level (any case).")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP gRPC collector, e.g. http://otel-collector:4317; unset: no export.",
    )
    tls_cert_file: FilePath | None = Field(
        default=None, description="PEM server certificate chain; with the key enables TLS."
    )
    tls_key_file: FilePath | None = Field(
        default=None, description="PEM private key of tls_cert_file."
    )
    tls_ca_file: FilePath | None = Field(
        default=None,
        description="PEM CA bundle; when set, clients must present a certificate (mTLS).",
    )

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port_disabled(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _DISABLED:
            return None
        return value

    @field_validator("port", "metrics_port", mode="after")
    @classmethod
    def _port_in_range(cls, value: int | None) -> int | None:
        # Repeated here so that a subclass redefining ``port: int = 50053`` keeps the bounds.
        if value is not None and not 0 <= value <= 65535:
            raise ValueError("port must be between 0 and 65535")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @_model_validator(mode="after")
    def _tls_files_consistent(self) -> Self:
        prefix = str(self.model_config.get("env_prefix", ""))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"{prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE must be set together")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(f"{prefix}TLS_CA_FILE requires {prefix}TLS_CERT_FILE and KEY_FILE")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None


S = TypeVar("S", bound=ServiceSettings)


class _MappingEnvSource(EnvSettingsSource):
    """The standard environment source, reading an explicit mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            (key if self.case_sensitive else key.lower()): value
            for key, value in self._environ.items()
            if not (self.env_ignore_empty and value == "")
        }


def _env_names(cls: type[ServiceSettings]) -> dict[str, str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        env_name = (prefix + name).upper()
        names[name] = env_name
        if isinstance(field.validation_alias, str):
            names[field.validation_alias] = (prefix + field.validation_alias).upper()
    return names


def _secret_fields(cls: type[ServiceSettings]) -> frozenset[str]:
    return frozenset(
        name
        for name, field in cls.model_fields.items()
        if isinstance(field.annotation, type)
        and issubclass(field.annotation, SecretStr | SecretBytes)
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(cls: type[ServiceSettings], error: ValidationError) -> str:
    env_names = _env_names(cls)
    secrets = _secret_fields(cls)
    parts: list[str] = []
    for item in error.errors(include_url=False):
        loc = item["loc"]
        message = item["msg"].removeprefix("Value error, ")
        if not loc:
            parts.append(f"invalid settings: {message}")
            continue
        field = str(loc[0])
        where = env_names.get(field, field.upper())
        if len(loc) > 1:
            where += "[" + ".".join(str(part) for part in loc[1:]) + "]"
        if item["type"] == "missing":
            parts.append(f"missing setting {where}: {message}")
        else:
            shown = "'***'" if field in secrets else repr(item.get("input"))
            parts.append(f"invalid setting {where}={shown}: {message}")
    return _one_line("; ".join(parts))


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Read ``cls`` from ``environ`` (default: ``os.environ``) once and validate it.

    Raises :class:`SettingsError` with a one-line message naming each bad variable.
    """
    source = _MappingEnvSource(cls, os.environ if environ is None else environ)
    try:
        values = source()
    except _PydanticSettingsError as exc:
        raise SettingsError(_one_line(f"invalid settings: {exc}")) from exc
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(cls, exc)) from None
