"""Registration of this instance with the mesh's control plane (capsule.mesh.v1.RegistryService).

    registrar = Registrar(target, instance, tls)   # tls: MeshTLS, None in plain text
    registrar.start()            # once SERVING: register, then heartbeat every ttl/3
    drained = await registrar.deregister()   # draining: leave Envoy's endpoint set
    await registrar.close()

A heartbeat answered NOT_FOUND (the lease lapsed, or the control plane restarted and forgot it)
registers again at once. An unreachable control plane is retried every heartbeat interval without
giving up: Envoy keeps its last configuration meanwhile, so the instance keeps serving.

The control plane knows the instance by its certificate (SPEC §12): it accepts the registration
only for the service the certificate names, and the lease only from the same identity. The channel
checks that it reaches the `control-plane` workload — an impostor would otherwise learn where the
instance serves and could answer its heartbeats — and follows certificate rotation (MeshChannel).
A refusal (PERMISSION_DENIED: a certificate for another service) is retried like an outage, but
logged as the misconfiguration it is.

The registration also tells where Prometheus scrapes the instance: its admin port (ADMIN_LISTEN,
the service process contract's variable), as the metadata entry `metrics` = host:port. The control
plane serves the live leases' entries as Prometheus service discovery (GET /sd/prometheus on its
admin port), so an instance is scraped from its registration on and forgotten when its lease ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import grpc
from capsule.mesh.v1 import registry_pb2, registry_pb2_grpc

from mesh.credentials import MeshChannel, MeshTLS
from mesh.pki import CONTROL_PLANE
from mesh.timing import TIMING
from services.common.background import cancel_and_wait

log = logging.getLogger(__name__)

# One registry call; the control plane answers in milliseconds, a slow answer is a failure.
CALL_TIMEOUT_S = 1.0

# The instance's metadata entry naming its metrics address (host:port of the admin port's /metrics).
METRICS_METADATA_KEY = "metrics"


def advertised_host(listen_host: str) -> str:
    """The address Envoy should dial: the listen host, unless it is a wildcard (compose: 0.0.0.0),
    then this machine's address on its network."""
    if listen_host in ("", "0.0.0.0", "::", "[::]"):
        return socket.gethostbyname(socket.gethostname())
    return listen_host


class Registrar:
    def __init__(
        self,
        target: str,
        instance: registry_pb2.ServiceInstance,
        tls: MeshTLS | None = None,
        *,
        metrics_listen: str | None = None,
    ) -> None:
        """`metrics_listen`: where the admin port (/metrics) listens, advertised in the metadata
        (`metrics`) unless the instance names it already; None: ADMIN_LISTEN; "": not advertised."""
        self.target = target
        self.instance = instance
        self.metrics_listen = os.environ.get("ADMIN_LISTEN", "") if metrics_listen is None else metrics_listen
        self.lease_id = ""
        # Until the control plane tells its own, and while it is unreachable (mesh/timing.py).
        self.interval = TIMING.heartbeat_seconds
        self._channel = MeshChannel(
            target,
            CONTROL_PLANE,
            tls,
            options=[
                # A restarted control plane is found again within a second (gRPC's default
                # reconnect back-off grows to 120 s).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.instance.host}:{self.instance.port}"

    @property
    def _stub(self) -> registry_pb2_grpc.RegistryServiceStub:
        return self._channel.stub(registry_pb2_grpc.RegistryServiceStub)  # the current certificate's channel

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="registrar")

    async def _register(self) -> None:
        request = registry_pb2.RegisterRequest(instance=self.instance)
        response = await self._stub.Register(request, timeout=CALL_TIMEOUT_S)
        self.lease_id = response.lease_id
        self.interval = max(0.05, response.heartbeat_interval.ToNanoseconds() / 1e9 or TIMING.heartbeat_seconds)
        self.registered.set()
        log.info(
            "registered with the control plane",
            extra={"fields": {"service": self.instance.service, "address": self.address, "target": self.target}},
        )

    async def _advertise_metrics(self) -> None:
        metadata = self.instance.metadata
        if not self.metrics_listen or METRICS_METADATA_KEY in metadata:
            return
        host, _, port = self.metrics_listen.rpartition(":")
        # A wildcard listen (compose) is advertised as this machine's address: a look-up, off the loop.
        try:
            metadata[METRICS_METADATA_KEY] = f"{await asyncio.to_thread(advertised_host, host)}:{port}"
        except OSError as exc:
            # This machine's name does not resolve: registering matters more than being scraped.
            log.warning(
                "not advertising a metrics address: this machine's address is unknown",
                extra={"fields": {"listen": self.metrics_listen, "error": str(exc)}},
            )

    async def _run(self) -> None:
        await self._advertise_metrics()
        failures = 0
        while True:
            try:
                if not self.lease_id:
                    await self._register()
                else:
                    await self._stub.Heartbeat(
                        registry_pb2.HeartbeatRequest(lease_id=self.lease_id), timeout=CALL_TIMEOUT_S
                    )
                failures = 0
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("lease unknown to the control plane: registering again")
                    self.lease_id = ""
                    continue
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    fields = {"target": self.target, "code": exc.code().name, "failures": failures}
                    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                        log.error(
                            "refused by the control plane; retrying",
                            extra={"fields": {**fields, "error": exc.details()}},
                        )
                    else:
                        log.warning("control plane unreachable; retrying", extra={"fields": fields})
            await asyncio.sleep(self.interval)

    async def deregister(self) -> bool:
        """Stop heartbeating and leave the endpoint set. True when the control plane confirmed that
        every connected Envoy applied the removal; False otherwise (unreachable, never registered,
        or no confirmation in time): the caller then relies on health checks to drain."""
        await self._stop_loop()
        if not self.lease_id:
            return False
        try:
            response = await self._stub.Deregister(
                registry_pb2.DeregisterRequest(lease_id=self.lease_id),
                # Longer than the control plane's confirmation bound (mesh/timing.py, relation 4).
                timeout=TIMING.deregister_call_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("deregistration failed", extra={"fields": {"code": exc.code().name}})
            return False
        finally:
            self.lease_id = ""
        log.info("deregistered", extra={"fields": {"drained": response.drained}})
        return bool(response.drained)

    async def _stop_loop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def close(self) -> None:
        await self._stop_loop()
        await self._channel.close()
