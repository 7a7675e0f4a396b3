"""Envoy's side of zero trust (SPEC §12), with a real Envoy 1.40 fed by the in-process control plane
and stand-in services serving mutual TLS: the listener refuses clients without a mesh certificate,
RBAC lets each identity call only what the protos allow it, services learn the caller from
x-forwarded-client-cert, Envoy refuses an upstream whose certificate names another service, and
the certificate the control plane serves over SDS rotates under load without a failed call."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable

import grpc
import pytest
from controlplane import resources as rs
from controlplane.app import ControlPlane
from cryptography import x509

from launcher.process import free_port
from mesh import envoy_config
from mesh.catalog import allowed_callers
from mesh.pki import MeshCA, server_name
from tests.mesh.conftest import XdsMesh
from tests.mesh.test_envoy_xds import _healthy, _present

pytestmark = pytest.mark.slow(11)  # scheduled first: see tests/conftest.py

PUBLIC = "/capsule.auth.v1.AuthService/GetMe"
INTERNAL = "/capsule.auth.v1.AuthService/GetUsers"
LISTENER = "grpc_ingress"


async def call(channel: grpc.aio.Channel, path: str, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """One call through Envoy; the stand-in's trailers (x-instance, x-caller)."""
    pending = channel.unary_unary(path)(b"", timeout=5, metadata=metadata)
    await pending
    return dict(await pending.trailing_metadata() or ())  # type: ignore[arg-type]


async def stat(mesh: XdsMesh, name: str) -> int:
    stats = await mesh.admin(f"/stats?format=json&filter=^{name.replace('.', '[.]')}$")
    values = [s.get("value", 0) for s in stats["stats"] if s.get("name") == name]
    return int(values[0]) if values else 0


async def start_tls_mesh(mesh: XdsMesh, *instances: tuple[str, str]) -> None:
    """A TLS mesh: stand-ins (address, identity) registered as auth, the control plane with a mesh
    CA, and Envoy (its ADS connection plain text: the control plane's own server is not TLS yet)."""
    mesh.use_tls()
    for address, identity in instances:
        await mesh.start_instance(address, identity)
    plane = await mesh.start_plane(lease_ttl=60)  # registered by hand below, without heartbeats
    for address, _ in instances:
        register_as_auth(plane, address)
    await mesh.start_envoy()


def register_as_auth(plane: ControlPlane, address: str) -> None:
    """In the registry directly: these tests are about Envoy, not about who may register (an
    instance holding another service's certificate could not register as auth over the API; the
    address of a registered instance could still be taken over, which is what Envoy must catch)."""
    host, port = address.rsplit(":", 1)
    plane.registry.register("auth", host, int(port), "local")


def test_the_catalog_still_declares_what_these_tests_rely_on() -> None:
    assert {"gateway", "operator"} <= allowed_callers()[PUBLIC]
    assert allowed_callers()[INTERNAL] == {"recipients", "capsules", "notifications"}


async def test_the_listener_refuses_clients_without_a_mesh_certificate(xds_mesh: XdsMesh) -> None:
    a = f"127.0.0.1:{free_port()}"
    await start_tls_mesh(xds_mesh, (a, "auth"))
    await xds_mesh.wait_for("a healthy", lambda: _healthy(xds_mesh, {a}))
    # The control: a mesh certificate gets through.
    assert (await call(xds_mesh.client("gateway"), PUBLIC))["x-instance"] == a

    assert xds_mesh.ca is not None
    target = f"127.0.0.1:{xds_mesh.port}"
    envoy_name = [("grpc.ssl_target_name_override", server_name("envoy"))]
    stranger = MeshCA.create(xds_mesh.tmp_path / "other-ca")
    other = stranger.issue("gateway")  # the right name, from the wrong CA
    refused = {
        "plain text": grpc.aio.insecure_channel(target),
        "TLS, no client certificate": grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(xds_mesh.ca.cert_pem), options=envoy_name
        ),
        "a certificate from another CA": grpc.aio.secure_channel(
            target,
            grpc.ssl_channel_credentials(xds_mesh.ca.cert_pem, other.key_pem, other.cert_pem),
            options=envoy_name,
        ),
    }
    prefix = f"listener.127.0.0.1_{xds_mesh.port}.ssl"
    for what, channel in refused.items():
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as refusal:
                await call(channel, PUBLIC)
            assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE, what
    # Refused by Envoy's TLS handshake, for the reason expected.
    assert await stat(xds_mesh, f"{prefix}.fail_verify_no_cert") >= 1
    assert await stat(xds_mesh, f"{prefix}.fail_verify_error") >= 1
    assert await stat(xds_mesh, f"{prefix}.connection_error") >= 1


async def test_rbac_lets_each_identity_call_only_what_the_protos_allow(xds_mesh: XdsMesh) -> None:
    a = f"127.0.0.1:{free_port()}"
    await start_tls_mesh(xds_mesh, (a, "auth"))
    await xds_mesh.wait_for("a healthy", lambda: _healthy(xds_mesh, {a}))
    gateway, capsules = xds_mesh.client("gateway"), xds_mesh.client("capsules")
    denied = envoy_config.rbac_stat(LISTENER, "denied")

    # A public method, from the gateway; the service learns the caller from Envoy's XFCC header.
    assert (await call(gateway, PUBLIC))["x-caller"] == "gateway"
    # A client's own x-forwarded-client-cert is replaced by what Envoy authenticated.
    forged = (("x-forwarded-client-cert", "URI=spiffe://capsule-mesh/capsules"),)
    trailers = await call(gateway, PUBLIC, forged)
    assert trailers["x-caller"] == "gateway"
    assert "capsules" not in trailers["x-xfcc"] and "URI=spiffe://capsule-mesh/gateway" in trailers["x-xfcc"]

    # An internal method: not for the gateway (even claiming to be capsules)...
    assert await stat(xds_mesh, denied) == 0
    for metadata in ((), forged):
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await call(gateway, INTERNAL, metadata)
        assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await stat(xds_mesh, denied) == 2
    # ...but for capsules, which the proto names.
    assert (await call(capsules, INTERNAL))["x-caller"] == "capsules"
    # A method nobody declared is nobody's, whoever asks.
    with pytest.raises(grpc.aio.AioRpcError) as refusal:
        await call(capsules, "/capsule.auth.v1.AuthService/NoSuchMethod")
    assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Reflection is open to any mesh identity: Envoy lets it through (the stand-in does not serve
    # it, hence UNIMPLEMENTED from the stand-in rather than PERMISSION_DENIED from Envoy).
    with pytest.raises(grpc.aio.AioRpcError) as passed:
        await call(xds_mesh.client("recipients"), "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert passed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await stat(xds_mesh, denied) == 3


async def test_envoy_refuses_an_upstream_whose_certificate_names_another_service(xds_mesh: XdsMesh) -> None:
    good, impostor = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    # Both hold valid mesh certificates and both registered as auth; only one is auth.
    await start_tls_mesh(xds_mesh, (good, "auth"), (impostor, "recipients"))
    await xds_mesh.wait_for("both in Envoy", lambda: _present(xds_mesh, {good, impostor}))
    await xds_mesh.wait_for("good healthy", lambda: _healthy(xds_mesh, {good}))

    async def san_refusals() -> int:
        return await stat(xds_mesh, "cluster.auth.ssl.fail_verify_san")

    # Several health-check rounds refused at the handshake, the impostor never healthy.
    await xds_mesh.wait_for("impostor refused three times", lambda: _at_least(san_refusals, 3))
    assert await xds_mesh.health() == {good: True, impostor: False}
    gateway = xds_mesh.client("gateway")
    assert {(await call(gateway, PUBLIC))["x-instance"] for _ in range(20)} == {good}


async def _at_least(read: Callable[[], Awaitable[int]], n: int) -> bool:
    return await read() >= n


def envoy_serials(certs: dict[str, object]) -> set[int]:
    """Serial numbers of the certificates Envoy presents (every TLS context: listener, clusters)."""
    return {
        int(chain["serial_number"], 16)
        for context in certs["certificates"]  # type: ignore[attr-defined]
        for chain in context.get("cert_chain", ())
    }


def _serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def _listener_serial(port: int, identity_dir: object, ca_pem: bytes) -> int:
    """The serial of the certificate Envoy's listener presents to a new TLS connection."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = True
    identity = f"{identity_dir}/identity.pem"
    context.load_cert_chain(identity, identity)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name("envoy")) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_the_envoy_certificate_rotates_under_load_without_a_failed_call(xds_mesh: XdsMesh) -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    await start_tls_mesh(xds_mesh, (a, "auth"), (b, "auth"))
    await xds_mesh.wait_for("a and b healthy", lambda: _healthy(xds_mesh, {a, b}))
    plane, envoy = xds_mesh.plane, xds_mesh.envoy
    assert plane is not None and envoy is not None and plane.envoy_identity is not None
    old = _serial(plane.envoy_identity.current.cert_pem)  # type: ignore[union-attr]
    assert envoy_serials(await xds_mesh.admin("/certs")) == {old}
    versions = dict(plane.cache.default.versions)  # type: ignore[union-attr]
    pid = envoy.pid

    ok, failures = 0, []
    stop = asyncio.Event()
    progress = asyncio.Condition()
    kept = xds_mesh.client("gateway")  # one connection across the rotation...

    async def worker(fresh: bool) -> None:
        nonlocal ok
        while not stop.is_set():
            # ...and new connections (new handshakes) before, during and after it.
            channel = xds_mesh.client("gateway") if fresh else kept
            try:
                await call(channel, PUBLIC)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(repr(exc))
            finally:
                if fresh:
                    await channel.close()
            async with progress:
                progress.notify_all()

    async def calls(n: int) -> None:
        target = ok + len(failures) + n
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: ok + len(failures) >= target), 30)

    workers = [asyncio.create_task(worker(fresh=i % 2 == 1)) for i in range(6)]
    try:
        await calls(100)
        new = _serial(plane.rotate_envoy_certificate().cert_pem)
        assert new != old
        await xds_mesh.wait_for("Envoy presents the new certificate", lambda: _only(xds_mesh, {new}), timeout=10)
        await calls(200)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert ok >= 300
    # New connections get the new certificate.
    assert xds_mesh.ca is not None
    identity = xds_mesh.identity("operator")
    assert await asyncio.to_thread(_listener_serial, xds_mesh.port, identity, xds_mesh.ca.cert_pem) == new
    # Only the secrets changed: no listener, cluster, route or endpoint push; Envoy not restarted.
    after = plane.cache.default.versions  # type: ignore[union-attr]
    assert {t for t in after if after[t] != versions[t]} == {rs.SECRET}
    assert envoy.running and envoy.pid == pid
    assert await stat(xds_mesh, "listener_manager.listener_modified") == 0
    status = await xds_mesh.cp_admin("/status")
    assert status["nodes"][xds_mesh.node_id]["acked"]["sds"] == after[rs.SECRET]
    assert plane.cache.nacks == []


async def _only(mesh: XdsMesh, serials: set[int]) -> bool:
    return envoy_serials(await mesh.admin("/certs")) == serials


async def tls_ads_server(mesh: XdsMesh, identity: str) -> tuple[grpc.aio.Server, int]:
    """The plane's ADS (same cache) on a mutual-TLS port presenting `identity`'s certificate: the
    control plane's own server credentials are not this branch's."""
    from controlplane.ads import AggregatedDiscoveryService
    from envoy.service.discovery.v3 import ads_pb2_grpc

    from mesh.credentials import MeshTLS

    assert mesh.plane is not None
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscoveryService(mesh.plane.cache), server)
    port = server.add_secure_port("127.0.0.1:0", MeshTLS(mesh.identity(identity)).server_credentials())
    await server.start()
    return server, port


async def test_envoy_reaches_the_control_plane_over_mutual_tls_from_watched_files(xds_mesh: XdsMesh) -> None:
    a = f"127.0.0.1:{free_port()}"
    xds_mesh.use_tls()
    await xds_mesh.start_instance(a)
    plane = await xds_mesh.start_plane(lease_ttl=60)
    register_as_auth(plane, a)
    server, port = await tls_ads_server(xds_mesh, "control-plane")
    try:
        envoy_dir = xds_mesh.identity("envoy")
        envoy_config.write_xds_sds_files(envoy_dir)
        first = _serial((envoy_dir / "identity.pem").read_bytes())
        await xds_mesh.start_envoy(ads_port=port, tls_dir=envoy_dir)
        await xds_mesh.wait_for("a healthy", lambda: _healthy(xds_mesh, {a}))
        assert (await call(xds_mesh.client("gateway"), PUBLIC))["x-instance"] == a
        assert await stat(xds_mesh, "cluster.xds_cluster.ssl.handshake") >= 1
        sds = _serial(plane.envoy_identity.current.cert_pem)  # type: ignore[union-attr]
        assert envoy_serials(await xds_mesh.admin("/certs")) == {sds, first}

        # A renewed file (one rename) is picked up without a restart.
        assert xds_mesh.ca is not None
        renewed = xds_mesh.ca.issue("envoy")
        renewed.write(envoy_dir)
        await xds_mesh.wait_for(
            "the renewed file in use", lambda: _only(xds_mesh, {sds, _serial(renewed.cert_pem)}), timeout=10
        )
    finally:
        await server.stop(0)


async def test_envoy_refuses_a_control_plane_with_another_identity(xds_mesh: XdsMesh) -> None:
    xds_mesh.use_tls()
    await xds_mesh.start_plane()
    server, port = await tls_ads_server(xds_mesh, "auth")  # a mesh certificate, not the control plane's
    try:
        envoy_dir = xds_mesh.identity("envoy")
        envoy_config.write_xds_sds_files(envoy_dir)
        await xds_mesh.start_envoy(ads_port=port, tls_dir=envoy_dir, wait_ready=False)

        async def san_refusals() -> int:
            return await stat(xds_mesh, "cluster.xds_cluster.ssl.fail_verify_san")

        await xds_mesh.wait_for("the impostor refused", lambda: _at_least(san_refusals, 2))
        assert xds_mesh.plane is not None and not xds_mesh.plane.cache.connected
        assert (await xds_mesh.admin("/config_dump?resource=dynamic_listeners")).get("configs") in (None, [])
    finally:
        await server.stop(0)
