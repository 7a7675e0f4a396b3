"""Who may use the control plane (SPEC §12): the caller is the workload its certificate names.

The control plane hands out the mesh's routing: whoever registers an endpoint receives live calls
carrying passwords and tokens, and whoever reads the xDS resources learns the whole topology. So
its port trusts no network: the server requires a client certificate from the mesh CA (app.py),
and every call is then authorized by the identity in it, in two layers.

- Per API, here (`Authorization`, a server interceptor): `CALLERS` names the workloads that may
  call each gRPC service on this server: ADS only Envoy and the gateway (gRPC's proxyless xDS
  client), the registry only the services of the topology. A service missing from the table is
  refused to everyone — an API added to this server later stays closed until someone decides who
  may call it. An interceptor rather than wrapping the servicers at registration (as
  services/common/server.py does) because only an interceptor sees calls to every service,
  including those nobody listed; the control plane answers a few calls per instance and
  heartbeat interval, so the per-call cost does not matter.
- Per request, in registry_service.py: an instance registers only as the service its certificate
  names, and only a lease's holder renews or ends it (registry.py keeps the holder).

Plain text (MESH_PLAINTEXT=1, development only) names nobody: every check here and in the registry
service is skipped on a plain-text connection, since there is no identity to check. A TLS
connection whose certificate names no workload of the mesh is refused.

No reflection is served here: the registry's API is described to nobody, and mesh/catalog.py
keeps `capsule.mesh.*` out of what the services' reflection describes through Envoy.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, NoReturn

import grpc
from capsule.mesh.v1 import registry_pb2
from envoy.service.discovery.v3 import ads_pb2

from mesh.credentials import peer_workload
from mesh.pki import ENVOY, GATEWAY
from mesh.topology import SERVICES
from services.common.errors import PermissionDenied, ServiceError

log = logging.getLogger(__name__)

# gRPC service → the workloads that may call it on the control plane's port.
CALLERS: Mapping[str, frozenset[str]] = {
    # Envoy's configuration, and the gateway's (a proxyless gRPC xDS client).
    ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name: frozenset({ENVOY, GATEWAY}),
    # Secrets (SDS) carry private keys: Envoy's alone.
    "envoy.service.secret.v3.SecretDiscoveryService": frozenset({ENVOY}),
    # The service instances; the handlers then check the service and the lease holder.
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name: frozenset(s.name for s in SERVICES),
}


def _plain_text(context: grpc.aio.ServicerContext) -> bool:
    return context.auth_context().get("transport_security_type") == [b"insecure"]


async def deny(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    """End the call with `error`'s status and google.rpc details."""
    await context.abort_with_status(error.to_status())
    raise AssertionError("abort_with_status returned")  # it raises; this line tells mypy so


async def caller(context: grpc.aio.ServicerContext) -> str | None:
    """The calling workload, from its certificate; None on a plain-text connection only (no
    identity: the caller's checks are skipped). A certificate naming no mesh workload is refused."""
    if _plain_text(context):
        return None
    workload = peer_workload(context)
    if workload is None:
        await deny(context, PermissionDenied("the client certificate names no workload of the mesh"))
    return workload


async def admit(context: grpc.aio.ServicerContext, service: str, allowed: Collection[str]) -> None:
    """PERMISSION_DENIED unless the caller is one of `allowed` (or the connection is plain text)."""
    workload = await caller(context)
    if workload is None or workload in allowed:
        return
    log.warning("call refused", extra={"fields": {"caller": workload, "service": service}})
    who = ", ".join(sorted(allowed)) or "no workload"
    await deny(
        context,
        PermissionDenied(
            f"{workload} may not call {service} on the control plane (callers: {who})",
            metadata={"caller": workload, "service": service},
        ),
    )


Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def _guarded(behavior: Behavior, service: str, allowed: Collection[str]) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await admit(context, service, allowed)
            async for response in behavior(request, context):
                yield response

        return streaming

    async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context, service, allowed)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return single


class Authorization(grpc.aio.ServerInterceptor):
    """Every call admitted by `callers` (service full name → workloads), before its handler runs."""

    def __init__(self, callers: Mapping[str, Collection[str]] = CALLERS) -> None:
        self.callers = callers
        # method path → (the handler looked up, its guarded copy): built once per method.
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # an unknown method: gRPC answers UNIMPLEMENTED
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        service = method.lstrip("/").rpartition("/")[0]
        allowed = frozenset(self.callers.get(service, ()))
        replaced = {
            kind: _guarded(behavior, service, allowed)
            for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if (behavior := getattr(handler, kind)) is not None
        }
        guarded = handler._replace(**replaced)  # type: ignore[attr-defined]
        self._guarded[method] = (handler, guarded)
        return guarded
