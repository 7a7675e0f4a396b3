"""The AggregatedDiscoveryService (xDS v3, state of the world) over grpc.aio.

One `StreamAggregatedResources` stream per Envoy. Per stream and per type URL, `TypeState` keeps
what the protocol needs (as go-control-plane's and java-control-plane's servers keep it):

- the names last requested and last answered, the version and nonce last sent;
- a request whose `response_nonce` is not the last nonce sent for its type is stale: ignored;
- ACK (the request echoes the sent nonce, no error_detail): recorded; the request stays open as
  the watch, answered only when the snapshot version for the type changes;
- NACK (error_detail): recorded in the cache and logged; the same version is never resent —
  only a new snapshot version (or a change of requested names) gets an answer;
- clusters and listeners: the full set to a wildcard request (Envoy), the names requested otherwise
  (gRPC's xDS client subscribes by name); endpoints, routes and secrets (SDS): the names requested,
  with an empty assignment for endpoint names we do not have;
- the node's kind (Envoy, or a proxyless gRPC client: node.cluster == proxyless.NODE_CLUSTER)
  selects which default snapshot the stream is served;
- when several types change together they go out secrets → clusters → endpoints → listeners →
  routes, and after a clusters push the next endpoints request is always answered (the clusters
  Envoy re-creates wait for it while warming).

Resources come from the cache; the servicer knows nothing about the registry.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from controlplane import resources as rs
from controlplane.cache import ENVOY, PROXYLESS, SnapshotCache
from controlplane.proxyless import NODE_CLUSTER
from controlplane.snapshot import Snapshot
from mesh.credentials import peer_workload
from mesh.pki import ENVOY as ENVOY_WORKLOAD
from mesh.pki import GATEWAY
from services.common.background import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass
class TypeState:
    # Names the last request asked for (empty for wildcard types).
    requested: frozenset[str] = frozenset()
    # Names / version / nonce of the last response sent; None before the first.
    sent_names: frozenset[str] | None = None
    sent_version: str | None = None
    nonce: str = ""
    # A request is open: the next change of version may be sent.
    open: bool = False
    # Answer the next request even if nothing changed (endpoints after a clusters push).
    force: bool = False


class Stream:
    """The protocol state machine of one ADS stream; transport-free (tests feed it requests)."""

    def __init__(self, cache: SnapshotCache, stream_id: int, identity: str | None = None) -> None:
        """`identity`: the workload named by the client's certificate (authorization.py; None in
        plain text). A gateway is served as a gRPC client whatever node it claims to be, and
        secrets (Envoy's private key) go to Envoy alone."""
        self.cache = cache
        self.stream_id = stream_id
        self.identity = identity
        self.node_id = ""
        self.types: dict[str, TypeState] = {}
        self._nonces = itertools.count(1)

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        if not self.node_id:
            self.node_id = request.node.id or f"anonymous-{self.stream_id}"
            kind = PROXYLESS if request.node.cluster == NODE_CLUSTER or self.identity == GATEWAY else ENVOY
            self.cache.stream_opened(self.node_id, kind=kind, stream_id=self.stream_id)
        type_url = request.type_url
        if type_url not in rs.MESSAGES:
            log.warning("request for an unsupported type ignored", extra={"fields": {"type_url": type_url}})
            return []
        if type_url == rs.SECRET and self.identity not in (None, ENVOY_WORKLOAD):
            log.warning(
                "secrets asked for by a workload that is not Envoy", extra={"fields": {"caller": self.identity}}
            )
            return []
        state = self.types.setdefault(type_url, TypeState())
        self.cache.stream_watches(self.stream_id, type_url)
        if request.response_nonce and request.response_nonce != state.nonce:
            return []  # stale: answers a response that a newer one superseded
        snapshot = self.cache.snapshot_for(self.node_id)
        if request.response_nonce:
            if request.HasField("error_detail"):
                self.cache.record_nack(
                    self.node_id,
                    type_url,
                    rejected=state.sent_version or "",
                    kept=request.version_info,
                    error=request.error_detail.message,
                )
            else:
                self.cache.record_ack(self.node_id, type_url, request.version_info, stream_id=self.stream_id)
        elif (
            state.sent_version is None
            and request.version_info
            and snapshot is not None
            and request.version_info == snapshot.version(type_url)
        ):
            # First request on this stream from an Envoy that already runs this exact version
            # (the control plane restarted): nothing to send; hold the watch.
            state.sent_version = request.version_info
            state.sent_names = frozenset(request.resource_names)
            self.cache.record_ack(self.node_id, type_url, request.version_info, stream_id=self.stream_id)
        state.requested = frozenset(request.resource_names)
        state.open = True
        return self._maybe_respond(type_url, snapshot, from_request=True)

    def on_snapshot(self) -> list[discovery_pb2.DiscoveryResponse]:
        if not self.node_id:
            return []
        snapshot = self.cache.snapshot_for(self.node_id)
        out: list[discovery_pb2.DiscoveryResponse] = []
        for type_url in rs.PUSH_ORDER:
            if type_url in self.types:
                out.extend(self._maybe_respond(type_url, snapshot, from_request=False))
        return out

    def _maybe_respond(
        self, type_url: str, snapshot: Snapshot | None, *, from_request: bool
    ) -> list[discovery_pb2.DiscoveryResponse]:
        state = self.types[type_url]
        if not state.open or snapshot is None:
            return []
        version = snapshot.version(type_url)
        changed = version != state.sent_version
        if from_request:
            changed = changed or state.requested != state.sent_names or state.force
        if not changed:
            return []
        # Named types always answer the names; listeners and clusters the names when some were given.
        names = state.requested if type_url in rs.NAMED_TYPES or state.requested else None
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=f"{self.stream_id}-{next(self._nonces)}",
            resources=[_pack(r) for r in snapshot.get(type_url, names)],
        )
        state.sent_version = version
        state.sent_names = state.requested
        state.nonce = response.nonce
        state.open = False
        state.force = False
        if type_url == rs.CLUSTER and rs.ENDPOINT in self.types:
            self.types[rs.ENDPOINT].force = True
        return [response]

    def close(self) -> None:
        if self.node_id:
            self.cache.stream_closed(self.node_id, stream_id=self.stream_id)


def _pack(resource: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(resource)  # type: ignore[arg-type]
    return packed


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self._ids = itertools.count(1)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = Stream(self.cache, next(self._ids), identity=peer_workload(context))
        # One queue of events: a request from Envoy, or None = the snapshot changed.
        events: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        unsubscribe = self.cache.subscribe(lambda: events.put_nowait(None))
        done = asyncio.Event()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    events.put_nowait(request)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            finally:
                done.set()
                events.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while not done.is_set() or not events.empty():
                event = await events.get()
                responses = stream.on_snapshot() if event is None else stream.on_request(event)
                for response in responses:
                    log.info(
                        "push",
                        extra={
                            "fields": {
                                "node": stream.node_id,
                                "type": rs.SHORT_NAMES[response.type_url],
                                "version": response.version_info,
                                "resources": len(response.resources),
                            }
                        },
                    )
                    yield response
        finally:
            unsubscribe()
            await cancel_and_wait(reader)
            stream.close()

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "delta xDS is not implemented; use state of the world")
        yield discovery_pb2.DeltaDiscoveryResponse()  # pragma: no cover (unreachable; makes this a generator)
