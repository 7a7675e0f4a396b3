"""capsule.mesh.v1.RegistryService: the registry's gRPC face, used by every service instance.

Each request is authorized by the caller's certificate (authorization.py has already admitted only
the topology's services to this API): an instance registers only as the service its certificate
names — else one compromised service could announce itself as another and receive that service's
calls — and the lease it gets is held by that identity, so that no other workload renews or ends
it even with the id in hand (registry.py). Refusals are PERMISSION_DENIED and leave the registry as
it was. Over plain text (MESH_PLAINTEXT=1) there is no identity and these checks are skipped.
Lease ids are never logged.
"""

from __future__ import annotations

import logging

import grpc
from capsule.mesh.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2

from controlplane import resources as rs
from controlplane.authorization import caller, deny
from controlplane.cache import SnapshotCache
from controlplane.registry import NotLeaseHolder, Registry
from mesh.timing import TIMING, Timing
from services.common.errors import PermissionDenied

log = logging.getLogger(__name__)


def _not_holder(workload: str | None) -> PermissionDenied:
    log.warning("lease refused to a workload that does not hold it", extra={"fields": {"caller": workload}})
    return PermissionDenied(
        "the lease is held by another workload: only the workload that registered it may renew or end it",
        metadata={"caller": workload or ""},
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class RegistryService(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, cache: SnapshotCache, timing: Timing = TIMING) -> None:
        self.registry = registry
        self.cache = cache
        # Deregister answers once every connected Envoy acknowledged the endpoint set without the
        # instance, or after timing.deregister_confirm_seconds (the instance then falls back to its
        # health-check delay); instances heartbeat every timing.heartbeat_seconds.
        self.timing = timing

    async def Register(
        self, request: registry_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RegisterResponse:
        inst = request.instance
        workload = await caller(context)
        if workload is not None and inst.service != workload:
            log.warning(
                "registration refused: not the service the certificate names",
                extra={"fields": {"caller": workload, "service": inst.service}},
            )
            await deny(
                context,
                PermissionDenied(
                    f"{workload} may register only as {workload}, the service its certificate names, "
                    f"not as {inst.service!r}",
                    violations=[("instance.service", f"must be {workload!r}, the service the certificate names")],
                    metadata={"caller": workload, "service": inst.service},
                ),
            )
        try:
            lease = self.registry.register(
                inst.service, inst.host, inst.port, inst.zone, dict(inst.metadata), holder=workload
            )
        except NotLeaseHolder:
            await deny(context, _not_holder(workload))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("registered", extra={"fields": {"service": inst.service, "address": lease.endpoint.address}})
        return registry_pb2.RegisterResponse(
            lease_id=lease.lease_id,
            ttl=_duration(self.registry.ttl),
            heartbeat_interval=_duration(self.timing.heartbeat_seconds),
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.HeartbeatResponse:
        workload = await caller(context)
        try:
            renewed = self.registry.heartbeat(request.lease_id, holder=workload)
        except NotLeaseHolder:
            await deny(context, _not_holder(workload))
        if not renewed:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown or lapsed lease: register again")
        return registry_pb2.HeartbeatResponse()

    async def Deregister(
        self, request: registry_pb2.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeregisterResponse:
        workload = await caller(context)
        try:
            endpoint = self.registry.deregister(request.lease_id, holder=workload)
        except NotLeaseHolder:
            await deny(context, _not_holder(workload))
        if endpoint is not None:
            log.info("deregistered", extra={"fields": {"service": endpoint.service, "address": endpoint.address}})
        drained = await self.cache.wait_in_sync(rs.ENDPOINT, self.timing.deregister_confirm_seconds)
        return registry_pb2.DeregisterResponse(drained=drained)
