"""TLS when a certificate and key are configured; mTLS when a CA is configured too."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from agentmesh_common import (
    ClientTLS,
    Registration,
    ServiceSettings,
    build_server,
    create_channel,
    load_settings,
)

from .conftest import echo_handler

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, name: str, extensions: str) -> None:
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=directory
    )
    _openssl(
        "req",
        "-new",
        "-key",
        f"{name}.key",
        "-subj",
        f"/CN={name}",
        "-out",
        f"{name}.csr",
        cwd=directory,
    )
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=agentmesh test CA",
        "-days", "1", "-out", "ca.pem", cwd=directory,
    )  # fmt: skip
    _issue(directory, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _issue(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


async def _say(target: str, tls: ClientTLS) -> str:
    channel = create_channel(target, tracer_provider=TracerProvider(), tls=tls, default_timeout=5)
    try:
        say = channel.unary_unary(
            "/test.v1.Echo/Say", StringValue.SerializeToString, StringValue.FromString
        )
        response: StringValue = await say(StringValue(value="tls"))
        return response.value
    finally:
        await channel.close(None)


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_and_mutual_tls(pki: Pki, mutual: bool) -> None:
    environ = {
        "AGENTMESH_TLS_CERT_FILE": str(pki.server_cert),
        "AGENTMESH_TLS_KEY_FILE": str(pki.server_key),
    }
    if mutual:
        environ["AGENTMESH_TLS_CA_FILE"] = str(pki.ca)
    server = build_server(
        service_name="test",
        settings=load_settings(ServiceSettings, environ),
        registrations=[Registration.from_handler(echo_handler())],
        tracer_provider=TracerProvider(),
        registry=CollectorRegistry(),
    )
    await server.start()
    target = f"localhost:{server.port}"
    try:
        with_client_cert = ClientTLS.from_files(pki.ca, pki.client_cert, pki.client_key)
        assert await _say(target, with_client_cert) == "hello tls"
        without_client_cert = ClientTLS.from_files(pki.ca)
        if mutual:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _say(target, without_client_cert)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert await _say(target, without_client_cert) == "hello tls"
        # A client that does not trust the CA cannot connect at all.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _say(target, ClientTLS())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
