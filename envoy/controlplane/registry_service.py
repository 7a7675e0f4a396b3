"""capsule.mesh.v1.RegistryService: the registry's gRPC face, used by every service instance."""

from __future__ import annotations

import logging

import grpc
from capsule.mesh.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2

from controlplane import resources as rs
from controlplane.cache import SnapshotCache
from controlplane.registry import Registry
from mesh.timing import TIMING, Timing

log = logging.getLogger(__name__)


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
        try:
            lease = self.registry.register(inst.service, inst.host, inst.port, inst.zone, dict(inst.metadata))
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
        if not self.registry.heartbeat(request.lease_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown or lapsed lease: register again")
        return registry_pb2.HeartbeatResponse()

    async def Deregister(
        self, request: registry_pb2.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeregisterResponse:
        endpoint = self.registry.deregister(request.lease_id)
        if endpoint is not None:
            log.info("deregistered", extra={"fields": {"service": endpoint.service, "address": endpoint.address}})
        drained = await self.cache.wait_in_sync(rs.ENDPOINT, self.timing.deregister_confirm_seconds)
        return registry_pb2.DeregisterResponse(drained=drained)
