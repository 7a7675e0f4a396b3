"""`grpcurl` through Envoy reaches every service of the mesh by name: reflection (answered by any
instance, describing the whole catalog) lists each, describes it, and one call of each service's
every method, made by name through Envoy with a valid token, is answered by a process that
implements it (a domain answer or a domain error, never UNIMPLEMENTED or UNAVAILABLE). Each call
presents the certificate of a workload its proto allows (the operator where it may: public
methods), and reflection lists the internal services to operators only (SPEC §12)."""

from __future__ import annotations

import asyncio

import httpx
from google.protobuf import descriptor_pool

from launcher.protos import grpcurl_source
from launcher.stack import Stack
from mesh.catalog import allowed_callers, mesh_service_names, public_to
from tests.auth.test_auth_http import sign_up
from tests.auth.test_grpcurl import grpcurl

NOT_REACHED = ("Unimplemented", "Unavailable", "Failed to", "failed to", "does not expose", "PermissionDenied")


def running_services(stack: Stack) -> dict[str, list[str]]:
    """Full service name → its method names, for every proto service of the running topology
    (public and internal ones, e.g. recipients' RelationshipService)."""
    packages = {spec.proto_service.rsplit(".", 1)[0] for spec in stack.settings.services}
    pool = descriptor_pool.Default()
    return {
        name: [method.name for method in pool.FindServiceByName(name).methods]
        for name in mesh_service_names()
        if name.rsplit(".", 1)[0] in packages
    }


async def test_every_service_is_listed_described_and_reached_by_name(
    stack: Stack, envoy_grpc: str, client: httpx.AsyncClient
) -> None:
    services = running_services(stack)
    assert "capsule.recipients.v1.RelationshipService" in services or len(stack.settings.services) == 1

    code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "list")
    assert code == 0, err
    assert set(services) <= set(out.split()), out
    code, out, err = await grpcurl(stack.grpcurl_args("gateway"), envoy_grpc, "list")
    assert code == 0, err
    assert "capsule.auth.v1.AuthService" in out.split()
    assert "capsule.recipients.v1.RelationshipService" not in out.split(), "internal: operators only"

    pool = descriptor_pool.Default()
    session = await sign_up(client)
    token = f"authorization: Bearer {session['accessToken']}"
    # Each grpcurl is a process that reflects before it calls: run several at once.
    slots = asyncio.Semaphore(8)

    async def describe(service: str) -> None:
        async with slots:
            code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "describe", service)
        assert code == 0 and f"service {service.rsplit('.', 1)[1]} {{" in out, err

    async def call(service: str, method: str) -> None:
        callers = allowed_callers()[f"/{service}/{method}"]
        transport = stack.grpcurl_args()
        if "operator" not in callers:
            # An internal method, called as a workload its proto names. Reflection shows internal
            # services to operators only: for those, that grpcurl reads the method from the proto.
            transport = stack.grpcurl_args(min(callers))
            descriptor = pool.FindServiceByName(service)
            if not public_to("gateway", descriptor):
                transport += grpcurl_source(descriptor.file.name)
        async with slots:
            _, _, err = await grpcurl(transport, "-H", token, "-d", "{}", envoy_grpc, f"{service}/{method}")
        assert not any(marker in err for marker in NOT_REACHED), f"{service}/{method}: {err}"

    await asyncio.gather(
        *(describe(service) for service in services),
        *(call(service, method) for service, methods in services.items() for method in methods),
    )
