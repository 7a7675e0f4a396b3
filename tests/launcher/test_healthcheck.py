"""`python -m launcher.healthcheck`, run as compose runs it (a subprocess with the container's
environment) against a real grpc.aio health server: over mutual TLS it answers healthy only with a
mesh identity in MESH_TLS_DIR and a server that is the PEER named; plain text only with
MESH_PLAINTEXT=1. And `certs DIR`, the renewer container's check."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from launcher.bootstrap import REPO
from launcher.healthcheck import main
from mesh.credentials import MeshTLS, add_port
from mesh.pki import MeshCA, Wanted, renew_due

SERVICE = "capsule.auth.v1.AuthService"


@pytest.fixture
def ca(tmp_path: Path) -> MeshCA:
    return MeshCA.create(tmp_path / "ca")


async def health_server(tls: MeshTLS | None) -> tuple[grpc.aio.Server, str]:
    servicer = health_aio.HealthServicer()
    await servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = add_port(server, "127.0.0.1:0", tls)
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def tls_server(ca: MeshCA, tmp_path: Path) -> AsyncIterator[str]:
    ca.issue("auth").write(tmp_path / "auth")
    server, address = await health_server(MeshTLS(tmp_path / "auth"))
    yield address
    await server.stop(None)


@pytest.fixture
async def plaintext_server() -> AsyncIterator[str]:
    server, address = await health_server(None)
    yield address
    await server.stop(None)


async def healthcheck(env: dict[str, str], *args: str) -> int:
    """The exit code of `python -m launcher.healthcheck ARGS` with only `env`'s MESH_* variables;
    the server answers on this loop meanwhile."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")} | env
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "launcher.healthcheck",
        *args,
        cwd=REPO,
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


async def test_grpc_check_over_mutual_tls(tls_server: str, ca: MeshCA, tmp_path: Path) -> None:
    ca.issue("auth").write(tmp_path / "own")  # the container's own identity, as in compose
    MeshCA.create(tmp_path / "other-ca").issue("auth").write(tmp_path / "impostor")
    own = {"MESH_TLS_DIR": str(tmp_path / "own")}
    cases = {
        "own identity, the right peer": (own, ("grpc", tls_server, SERVICE, "auth"), 0),
        "a service the server does not know": (own, ("grpc", tls_server, "capsule.x.v1.X", "auth"), 1),
        "the server is not that peer": (own, ("grpc", tls_server, SERVICE, "recipients"), 1),
        "an identity from another CA": (
            {"MESH_TLS_DIR": str(tmp_path / "impostor")},
            ("grpc", tls_server, SERVICE, "auth"),
            1,
        ),
        "plain text to a TLS port": ({"MESH_PLAINTEXT": "1"}, ("grpc", tls_server, SERVICE, "auth"), 1),
        "no identity, no switch": ({}, ("grpc", tls_server, SERVICE, "auth"), 1),
        "a missing identity directory": (
            {"MESH_TLS_DIR": str(tmp_path / "none")},
            ("grpc", tls_server, SERVICE, "auth"),
            1,
        ),
        "TLS without a peer": (own, ("grpc", tls_server, SERVICE), 2),
    }
    codes = await asyncio.gather(*(healthcheck(env, *args) for env, args, _ in cases.values()))
    assert dict(zip(cases, codes, strict=True)) == {name: code for name, (_, _, code) in cases.items()}


async def test_grpc_check_in_plain_text_only_with_the_switch(plaintext_server: str) -> None:
    assert await healthcheck({"MESH_PLAINTEXT": "1"}, "grpc", plaintext_server, SERVICE) == 0
    assert await healthcheck({}, "grpc", plaintext_server, SERVICE) == 1


def test_certs_check_follows_the_renewer(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert main(["certs", str(out)]) == 1  # no pass finished
    renew_due(ca, out, [Wanted("auth"), Wanted("envoy")])
    assert main(["certs", str(out)]) == 0
    (out / "envoy" / "identity.pem").unlink()
    assert main(["certs", str(out)]) == 1
    assert main(["certs"]) == 2
