"""Mutual TLS between Python workloads (mesh/pki.py, mesh/credentials.py), over real sockets: a
server refuses a client without a certificate or with one from another CA; a client refuses a server
whose certificate names another workload; the caller is known by its certificate; a rotated
certificate is served to the next handshake and followed by the client's channel, with no call lost.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from mesh.credentials import MeshChannel, MeshTLS, add_port, caller_workload, xfcc_workload
from mesh.pki import IDENTITY_NAME, MeshCA, workload_of

CHECK = health_pb2.HealthCheckRequest()


class Recording(health_aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.callers: list[str | None] = []

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:  # type: ignore[override]
        self.callers.append(caller_workload(context))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def ca(tmp_path: Path) -> MeshCA:
    return MeshCA.ensure(tmp_path / "ca")


@pytest.fixture
async def server(ca: MeshCA, tmp_path: Path) -> AsyncIterator[tuple[int, Recording]]:
    ca.issue("auth").write(tmp_path / "auth")
    servicer = Recording()
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = add_port(grpc_server, "127.0.0.1:0", MeshTLS(tmp_path / "auth", check_seconds=0))
    await grpc_server.start()
    yield port, servicer
    await grpc_server.stop(None)


def served_serial(address: str | int, client_identity: Path) -> int:
    """The serial number of the certificate the server at `address` ("host:port", or a port on
    127.0.0.1) presents to a new handshake, asked with `client_identity` (an identity.pem)."""
    host, _, port = str(address).rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(client_identity)
    with socket.create_connection((host or "127.0.0.1", int(port))) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_pb2_grpc.HealthStub(channel).Check(CHECK, timeout=3)
    await channel.close()
    return failure.value.code()


async def test_only_a_client_with_a_mesh_certificate_gets_in_and_is_known_by_it(
    server: tuple[int, Recording], ca: MeshCA, tmp_path: Path
) -> None:
    port, servicer = server
    ca.issue("gateway").write(tmp_path / "gateway")
    channel = MeshChannel(f"127.0.0.1:{port}", "auth", MeshTLS(tmp_path / "gateway"))
    answer = await channel.stub(health_pb2_grpc.HealthStub).Check(CHECK, timeout=3)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert servicer.callers == ["gateway"]
    await channel.close()

    assert await refused(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) == grpc.StatusCode.UNAVAILABLE
    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    no_client_certificate = grpc.ssl_channel_credentials(ca_pem)
    anonymous = grpc.aio.secure_channel(
        f"127.0.0.1:{port}", no_client_certificate, options=[("grpc.ssl_target_name_override", "auth.capsule-mesh")]
    )
    assert await refused(anonymous) == grpc.StatusCode.UNAVAILABLE
    MeshCA.create(tmp_path / "other-ca").issue("gateway").write(tmp_path / "impostor")
    impostor = MeshChannel(f"127.0.0.1:{port}", "auth", MeshTLS(tmp_path / "impostor"))
    assert await refused(impostor.get()) == grpc.StatusCode.UNAVAILABLE
    assert servicer.callers == ["gateway"]


async def test_a_client_refuses_a_server_that_is_not_the_workload_it_dials(
    server: tuple[int, Recording], ca: MeshCA, tmp_path: Path
) -> None:
    port, servicer = server
    ca.issue("gateway").write(tmp_path / "gateway")
    wrong = MeshChannel(f"127.0.0.1:{port}", "capsules", MeshTLS(tmp_path / "gateway"))
    assert await refused(wrong.get()) == grpc.StatusCode.UNAVAILABLE
    assert servicer.callers == []


async def test_rotated_certificates_reach_new_handshakes_and_channels_without_a_failed_call(
    server: tuple[int, Recording], ca: MeshCA, tmp_path: Path
) -> None:
    port, servicer = server
    ca.issue("gateway").write(tmp_path / "gateway")
    client_tls = MeshTLS(tmp_path / "gateway", check_seconds=0)
    channel = MeshChannel(f"127.0.0.1:{port}", "auth", client_tls, retire_grace=0.2)
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def load() -> int:
        calls = 0
        while not stop.is_set():
            try:
                await channel.stub(health_pb2_grpc.HealthStub).Check(CHECK, timeout=3)
                calls += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)
        return calls

    workers = [asyncio.create_task(load()) for _ in range(4)]
    identity = tmp_path / "gateway" / IDENTITY_NAME
    for _ in range(3):
        before_server = await asyncio.to_thread(served_serial, port, identity)
        before_client = channel.get()
        ca.issue("auth", ttl=datetime.timedelta(hours=1)).write(tmp_path / "auth")
        ca.issue("gateway", ttl=datetime.timedelta(hours=1)).write(tmp_path / "gateway")
        assert await asyncio.to_thread(served_serial, port, identity) != before_server
        assert channel.get() is not before_client
        await asyncio.sleep(0.3)  # load runs on both the new channel and the retiring one
    stop.set()
    calls = sum(await asyncio.gather(*workers))
    await channel.close()
    assert failures == []
    assert calls > 0 and set(servicer.callers) == {"gateway"}


def test_identities_outside_the_trust_domain_name_no_workload() -> None:
    assert workload_of("spiffe://capsule-mesh/auth") == "auth"
    assert workload_of("spiffe://other-mesh/auth") is None
    assert workload_of("spiffe://capsule-mesh/auth/extra") is None
    assert workload_of("spiffe://capsule-mesh/") is None
    header = "By=spiffe://capsule-mesh/envoy;Hash=ab12;URI=spiffe://capsule-mesh/gateway"
    assert xfcc_workload(header) == "gateway"
    assert xfcc_workload("Hash=ab12") is None
    assert xfcc_workload("URI=spiffe://evil/gateway") is None


def test_without_a_certificate_directory_a_workload_needs_the_explicit_plain_text_switch(tmp_path: Path) -> None:
    from mesh.credentials import TLSSetupError

    with pytest.raises(TLSSetupError):
        MeshTLS.from_env({})
    assert MeshTLS.from_env({"MESH_PLAINTEXT": "1"}) is None
    with pytest.raises(FileNotFoundError):
        MeshTLS.from_env({"MESH_TLS_DIR": str(tmp_path / "missing")})
