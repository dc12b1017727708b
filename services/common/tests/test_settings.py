"""Settings come from the environment once; a bad value is one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings, SettingsError, load_settings


class MemorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_MEMORY_")

    port: int = Field(default=50053, description="gRPC port.")
    metrics_port: int | None = Field(default=9103, description="Prometheus port.")


def _error(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(MemorySettings, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_without_environment() -> None:
    settings = load_settings(MemorySettings, {})
    assert (settings.host, settings.port, settings.metrics_port) == ("127.0.0.1", 50053, 9103)
    assert settings.grace_seconds == 10.0
    assert settings.log_level == "INFO"
    assert settings.otlp_endpoint is None
    assert not settings.tls_enabled


def test_valid_environment_values_parse(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("pem")
    settings = load_settings(
        MemorySettings,
        {
            "AGENTMESH_MEMORY_HOST": "0.0.0.0",
            "AGENTMESH_MEMORY_PORT": "6000",
            "agentmesh_memory_metrics_port": "off",
            "AGENTMESH_MEMORY_GRACE_SECONDS": "2.5",
            "AGENTMESH_MEMORY_LOG_LEVEL": "debug",
            "AGENTMESH_MEMORY_OTLP_ENDPOINT": "http://collector:4317",
            "AGENTMESH_MEMORY_TLS_CERT_FILE": str(cert),
            "AGENTMESH_MEMORY_TLS_KEY_FILE": str(key),
            "AGENTMESH_MEMORY_TLS_CA_FILE": str(ca),
            "AGENTMESH_GATEWAY_PORT": "not for us",
            "AGENTMESH_PORT": "not for us either",
        },
    )
    assert settings.host == "0.0.0.0"
    assert settings.port == 6000
    assert settings.metrics_port is None
    assert settings.grace_seconds == 2.5
    assert settings.log_level == "DEBUG"
    assert settings.otlp_endpoint == "http://collector:4317"
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file) == (cert, key, ca)
    assert settings.tls_enabled


def test_bad_integer_names_the_variable() -> None:
    assert _error({"AGENTMESH_MEMORY_PORT": "abc"}).startswith(
        "invalid setting AGENTMESH_MEMORY_PORT='abc': Input should be a valid integer"
    )


@pytest.mark.parametrize("variable", ["AGENTMESH_MEMORY_PORT", "AGENTMESH_MEMORY_METRICS_PORT"])
def test_out_of_range_port_names_the_variable(variable: str) -> None:
    message = _error({variable: "70000"})
    assert message.startswith(f"invalid setting {variable}='70000': ")
    assert "65535" in message


def test_bad_log_level_names_the_variable() -> None:
    message = _error({"AGENTMESH_MEMORY_LOG_LEVEL": "loud"})
    assert message.startswith("invalid setting AGENTMESH_MEMORY_LOG_LEVEL=")
    assert "'DEBUG', 'INFO', 'WARNING' or 'ERROR'" in message


def test_several_bad_values_stay_on_one_line() -> None:
    message = _error({"AGENTMESH_MEMORY_PORT": "-1", "AGENTMESH_MEMORY_GRACE_SECONDS": "0"})
    assert "AGENTMESH_MEMORY_PORT='-1'" in message
    assert "AGENTMESH_MEMORY_GRACE_SECONDS='0'" in message


def test_tls_key_without_certificate_is_rejected(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("pem")
    message = _error({"AGENTMESH_MEMORY_TLS_KEY_FILE": str(key)})
    assert "AGENTMESH_MEMORY_TLS_CERT_FILE and AGENTMESH_MEMORY_TLS_KEY_FILE" in message


def test_missing_tls_file_names_the_variable(tmp_path: Path) -> None:
    message = _error({"AGENTMESH_MEMORY_TLS_CA_FILE": str(tmp_path / "nope.pem")})
    assert message.startswith("invalid setting AGENTMESH_MEMORY_TLS_CA_FILE=")
