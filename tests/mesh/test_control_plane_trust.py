"""The control plane trusts certificates, not the network (SPEC §12), over real sockets: a client
without a mesh certificate never gets in; a service registers only as itself; only a lease's holder
renews or ends it, even with the id in hand; only Envoy and the gateway read xDS; the admin port
hands out no lease id; the registry's API is described by no reflection.

One in-process control plane per test, with the `control-plane` certificate of a CA made for the
test, and clients dialling it with certificates issued per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from capsule.mesh.v1 import registry_pb2, registry_pb2_grpc
from controlplane import resources as rs
from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.authorization import Authorization
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from mesh.catalog import mesh_service_names
from mesh.credentials import MeshChannel, MeshTLS, add_port
from mesh.pki import CONTROL_PLANE, ENVOY, GATEWAY, OPERATOR, MeshCA
from services.common.registration import Registrar

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


class Mesh:
    """A test CA, a control plane holding its certificate, and clients with certificates of it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.ca = MeshCA.create(tmp_path / "ca")
        self.plane: ControlPlane | None = None
        self.channels: list[MeshChannel] = []

    def identity(self, workload: str, ca: MeshCA | None = None) -> MeshTLS:
        directory = self.tmp_path / ("impostors" if ca else "workloads") / workload
        (ca or self.ca).issue(workload).write(directory)
        return MeshTLS(directory)

    async def start(self) -> ControlPlane:
        settings = ControlPlaneSettings(
            listen="127.0.0.1:0", admin_listen="127.0.0.1:0", warmup_seconds=0, tls=self.identity(CONTROL_PLANE)
        )
        self.plane = await ControlPlane(settings).start()
        return self.plane

    @property
    def target(self) -> str:
        assert self.plane is not None
        return f"127.0.0.1:{self.plane.port}"

    def channel(self, workload: str, ca: MeshCA | None = None) -> MeshChannel:
        channel = MeshChannel(self.target, CONTROL_PLANE, self.identity(workload, ca))
        self.channels.append(channel)
        return channel

    def registry(self, workload: str) -> registry_pb2_grpc.RegistryServiceStub:
        return self.channel(workload).stub(registry_pb2_grpc.RegistryServiceStub)

    def admin_page(self, path: str) -> str:
        assert self.plane is not None and self.plane.admin_server is not None
        url = f"http://127.0.0.1:{self.plane.admin_server.port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self.plane is not None:
            await self.plane.stop(grace=0)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(tmp_path)
    await mesh.start()
    yield mesh
    await mesh.close()


def instance(service: str, port: int = 7001) -> registry_pb2.ServiceInstance:
    return registry_pb2.ServiceInstance(service=service, host="127.0.0.1", port=port, zone="z1")


async def register(stub: registry_pb2_grpc.RegistryServiceStub, service: str) -> str:
    response = await stub.Register(registry_pb2.RegisterRequest(instance=instance(service)), timeout=5)
    return str(response.lease_id)


async def failure(call: Callable[[], Awaitable[object]]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call()
    return raised.value


def leases(plane: ControlPlane) -> list[tuple[str, str, str | None]]:
    return [(lease.lease_id, lease.endpoint.service, lease.holder) for lease in plane.registry.leases()]


# --- who gets in -----------------------------------------------------------------------------------


async def test_a_client_without_a_mesh_certificate_is_refused_at_the_handshake(mesh: Mesh) -> None:
    plain = grpc.aio.insecure_channel(mesh.target)
    ca_pem = (mesh.tmp_path / "ca" / "ca.pem").read_bytes()
    no_client_certificate = grpc.aio.secure_channel(
        mesh.target,
        grpc.ssl_channel_credentials(ca_pem),
        options=[("grpc.ssl_target_name_override", "control-plane.capsule-mesh")],
    )
    for channel in (plain, no_client_certificate):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        refused = await failure(lambda s=stub: register(s, "auth"))  # type: ignore[misc]
        await channel.close()
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert mesh.plane is not None and leases(mesh.plane) == []


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(mesh: Mesh) -> None:
    impostor = mesh.channel("auth", ca=MeshCA.create(mesh.tmp_path / "other-ca"))
    stub = impostor.stub(registry_pb2_grpc.RegistryServiceStub)
    refused = await failure(lambda: register(stub, "auth"))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert mesh.plane is not None and leases(mesh.plane) == []
    await register(mesh.registry("auth"), "auth")  # the same workload with the mesh CA's certificate
    assert [service for _, service, _ in leases(mesh.plane)] == ["auth"]


def foreign_identity(ca: MeshCA, directory: Path, uri: str) -> MeshTLS:
    """A certificate from the mesh CA whose identity is `uri` (what MeshCA.issue never writes)."""
    issued = ca.issue("auth")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_before_utc + datetime.timedelta(hours=1))
    )
    for extension in cert.extensions:
        if isinstance(extension.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), True)
        else:
            builder = builder.add_extension(extension.value, extension.critical)
    forged = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    dataclasses.replace(issued, cert_pem=forged).write(directory)
    return MeshTLS(directory)


async def test_a_mesh_ca_certificate_naming_no_mesh_workload_is_refused(mesh: Mesh) -> None:
    tls = foreign_identity(mesh.ca, mesh.tmp_path / "foreign", "spiffe://other-mesh/auth")
    channel = MeshChannel(mesh.target, CONTROL_PLANE, tls)
    mesh.channels.append(channel)
    refused = await failure(lambda: register(channel.stub(registry_pb2_grpc.RegistryServiceStub), "auth"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names no workload of the mesh" in str(refused.details())
    refused = await failure(lambda: first_ads_answer(channel))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert mesh.plane is not None and leases(mesh.plane) == []


# --- registration ----------------------------------------------------------------------------------


async def test_a_service_registers_as_itself_and_holds_its_lease(mesh: Mesh) -> None:
    auth = mesh.registry("auth")
    lease_id = await register(auth, "auth")
    assert mesh.plane is not None
    assert leases(mesh.plane) == [(lease_id, "auth", "auth")]
    assert [e.address for e in mesh.plane.registry.endpoints()["auth"]] == ["127.0.0.1:7001"]
    await auth.Heartbeat(registry_pb2.HeartbeatRequest(lease_id=lease_id), timeout=5)
    await auth.Deregister(registry_pb2.DeregisterRequest(lease_id=lease_id), timeout=5)
    assert leases(mesh.plane) == []


async def test_a_service_cannot_register_as_another(mesh: Mesh) -> None:
    auth = mesh.registry("auth")
    refused = await failure(lambda: register(auth, "capsules"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "auth may register only as auth" in str(refused.details())
    status = rpc_status.from_call(refused)  # type: ignore[arg-type]
    assert status is not None
    details = {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    details["google.rpc.ErrorInfo"].Unpack(info)
    details["google.rpc.BadRequest"].Unpack(bad_request)
    assert (info.reason, dict(info.metadata)) == ("PERMISSION_DENIED", {"caller": "auth", "service": "capsules"})
    assert [v.field for v in bad_request.field_violations] == ["instance.service"]
    assert mesh.plane is not None
    assert leases(mesh.plane) == [] and mesh.plane.registry.endpoints() == {}


async def test_workloads_that_are_not_services_cannot_register(mesh: Mesh) -> None:
    for workload in (ENVOY, GATEWAY, OPERATOR):
        refused = await failure(lambda w=workload: register(mesh.registry(w), w))  # type: ignore[misc]
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, workload
    assert mesh.plane is not None and leases(mesh.plane) == []


async def test_another_service_holding_the_lease_id_cannot_renew_or_end_the_lease(mesh: Mesh) -> None:
    auth, recipients = mesh.registry("auth"), mesh.registry("recipients")
    lease_id = await register(auth, "auth")
    await register(recipients, "recipients")  # a registered service, with a lease of its own

    renew = await failure(lambda: recipients.Heartbeat(registry_pb2.HeartbeatRequest(lease_id=lease_id), timeout=5))
    end = await failure(lambda: recipients.Deregister(registry_pb2.DeregisterRequest(lease_id=lease_id), timeout=5))
    assert (renew.code(), end.code()) == (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED)
    assert mesh.plane is not None
    assert (lease_id, "auth", "auth") in leases(mesh.plane)
    assert [e.address for e in mesh.plane.registry.endpoints()["auth"]] == ["127.0.0.1:7001"]
    await auth.Heartbeat(registry_pb2.HeartbeatRequest(lease_id=lease_id), timeout=5)  # still auth's


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_the_registrar_registers_over_mutual_tls_as_the_service_its_certificate_names(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    assert mesh.plane is not None
    registrar = Registrar(mesh.target, instance("auth"), mesh.identity("auth"))
    registrar.start()
    await asyncio.wait_for(registrar.registered.wait(), timeout=5)
    assert leases(mesh.plane) == [(registrar.lease_id, "auth", "auth")]
    await registrar.deregister()
    await registrar.close()
    assert leases(mesh.plane) == []

    caplog.set_level(logging.ERROR, logger="services.common.registration")
    wrong = Registrar(mesh.target, instance("auth"), mesh.identity("recipients"))
    wrong.start()
    await until(lambda: any(r.getMessage() == "refused by the control plane; retrying" for r in caplog.records))
    await wrong.close()
    assert not wrong.registered.is_set() and leases(mesh.plane) == []


# --- ADS -------------------------------------------------------------------------------------------


async def first_ads_answer(channel: MeshChannel) -> discovery_pb2.DiscoveryResponse:
    stub = channel.stub(ads_pb2_grpc.AggregatedDiscoveryServiceStub)
    request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="trust-test", cluster="envoy"), type_url=rs.CLUSTER)
    call = stub.StreamAggregatedResources(timeout=5)
    # The server may refuse the stream before the request is sent (a busy machine): the write then
    # fails with a local INTERNAL ("Failed execute_batch"); the server's answer is the call's own
    # status, raised by the read below.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(request)
    try:
        response = await call.read()
    finally:
        call.cancel()
    assert isinstance(response, discovery_pb2.DiscoveryResponse)
    return response


async def test_only_envoy_and_the_gateway_open_ads_streams(mesh: Mesh) -> None:
    for workload in (ENVOY, GATEWAY):
        answer = await first_ads_answer(mesh.channel(workload))
        assert answer.type_url == rs.CLUSTER and answer.resources, workload
    for workload in ("recipients", OPERATOR):
        refused = await failure(lambda w=workload: first_ads_answer(mesh.channel(w)))  # type: ignore[misc]
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, workload
        assert f"{workload} may not call envoy.service.discovery.v3.AggregatedDiscoveryService" in str(
            refused.details()
        )


# --- what the control plane shows ------------------------------------------------------------------


async def test_no_admin_page_shows_a_lease_id(mesh: Mesh) -> None:
    lease_id = await register(mesh.registry("auth"), "auth")
    registry = json.loads(await asyncio.to_thread(mesh.admin_page, "/registry"))
    assert [(r["service"], r["address"], r["zone"]) for r in registry] == [("auth", "127.0.0.1:7001", "z1")]
    assert registry[0]["expires_in"] > 0
    for path in ("/registry", "/status", "/nacks", "/healthz"):
        assert lease_id not in await asyncio.to_thread(mesh.admin_page, path), path


async def test_the_registry_api_is_described_by_no_reflection(mesh: Mesh) -> None:
    # Envoy routes reflection to the services, whose catalog leaves the control plane's API out.
    assert REGISTRY_SERVICE not in mesh_service_names()
    # The control plane itself serves no reflection, not even to an operator.
    stub = mesh.channel(OPERATOR).stub(reflection_pb2_grpc.ServerReflectionStub)

    call = stub.ServerReflectionInfo(timeout=5)
    try:
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.read()
    except grpc.aio.AioRpcError:
        # The server may refuse the call before the request is sent: the write then fails with a
        # local INTERNAL ("Failed execute_batch"); the call's own status is the server's answer.
        pass
    assert await call.code() == grpc.StatusCode.UNIMPLEMENTED


# --- the interceptor alone -------------------------------------------------------------------------


class Health(health_aio.HealthServicer):
    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:  # type: ignore[override]
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def check_health(tmp_path: Path, callers: dict[str, frozenset[str]], plain: bool = False) -> grpc.StatusCode:
    ca = MeshCA.ensure(tmp_path / "ca")
    for workload in ("server", "gateway"):
        ca.issue(workload).write(tmp_path / workload)
    server = grpc.aio.server(interceptors=[Authorization(callers)])
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = add_port(server, "127.0.0.1:0", None if plain else MeshTLS(tmp_path / "server"))
    await server.start()
    channel = MeshChannel(f"127.0.0.1:{port}", "server", None if plain else MeshTLS(tmp_path / "gateway"))
    try:
        await channel.stub(health_pb2_grpc.HealthStub).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_service_nobody_listed_is_refused_to_everyone_but_plain_text_is_not_checked(tmp_path: Path) -> None:
    health = "grpc.health.v1.Health"
    assert await check_health(tmp_path, {}) == grpc.StatusCode.PERMISSION_DENIED
    assert await check_health(tmp_path, {health: frozenset({"auth"})}) == grpc.StatusCode.PERMISSION_DENIED
    assert await check_health(tmp_path, {health: frozenset({"gateway"})}) == grpc.StatusCode.OK
    assert await check_health(tmp_path, {}, plain=True) == grpc.StatusCode.OK  # no identity to check
