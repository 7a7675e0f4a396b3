"""The gRPC side: long-lived channels, one pre-built callable per method, metadata, deadlines.

One `grpc.aio` channel per distinct target, opened at start-up and closed at shutdown (and opened
anew when the gateway's mesh certificate rotates: the old ones finish their calls, then close):
- proxyless (GATEWAY_XDS_SERVER set): `xds:///<proto package>` per service; gRPC's xDS client
  balances across the instances and applies the control plane's retry policy (xds.py), so
  retries are on in those channels (they also enable gRPC's transparent retries of calls that
  never reached a server);
- otherwise every service goes to GATEWAY_UPSTREAM, Envoy's gRPC listener. Retries are off in
  that channel: Envoy retries, and two layers of retries multiply load during an outage.
Every channel is mutual TLS as the `gateway` workload and checks that the other end is the workload
it should be (Envoy, or the service itself when dialled directly); plain text only with
MESH_PLAINTEXT=1 (mesh/credentials.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping, Sequence

import grpc
from google.protobuf.message import Message

from gateway import xds
from gateway.descriptors import Rpc
from gateway.problems import Problem
from gateway.settings import Settings
from mesh.credentials import MeshTLS, RetiredChannels, open_channel
from services.common import tracing

log = logging.getLogger(__name__)

CHANNEL_OPTIONS: Sequence[tuple[str, int | str]] = (
    ("grpc.enable_retries", 0),
    # Notice a dead connection (e.g. Envoy restarted behind a NAT) while calls are in flight.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
)
# xds targets: gRPC itself routes, balances and retries (the RDS retry policy of idempotent
# methods, transparent retries for the rest), which needs retries enabled in the channel.
XDS_CHANNEL_OPTIONS: Sequence[tuple[str, int | str]] = (
    ("grpc.enable_retries", 1),
    *(option for option in CHANNEL_OPTIONS if option[0] != "grpc.enable_retries"),
)

# HTTP request headers forwarded as gRPC metadata, under the same (lower-case) names. The trace
# context only while tracing is off: with it on, the request's span continues the client's trace
# and the call sends the context of its own client span (a child of it), see Upstream.call.
FORWARDED_HEADERS: Mapping[bytes, str] = {
    name.encode(): name for name in ("authorization", "idempotency-key", "traceparent", "tracestate")
}
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
FORWARDED_WHEN_TRACING: Mapping[bytes, str] = {
    header: key for header, key in FORWARDED_HEADERS.items() if header not in _TRACE_HEADERS
}
# Longer trace headers are left out of the call (best effort; gateway/headers.py bounds the others).
MAX_TRACE_LENGTHS: Mapping[str, int] = {"traceparent": 128, "tracestate": 512}
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Upstream:
    def __init__(self, settings: Settings, rpcs: Iterable[Rpc], tls: MeshTLS | None) -> None:
        self.settings = settings
        self.tls = tls
        self.rpcs = {rpc.path: rpc for rpc in rpcs}
        self.targets = {path: settings.upstream_for(rpc.service) for path, rpc in self.rpcs.items()}
        self.peers = {self.targets[path]: settings.upstream_peer(rpc.service) for path, rpc in self.rpcs.items()}
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._generation = 0
        self._retired = RetiredChannels()

    async def start(self) -> None:
        """Opens the channels and builds the callables (needs the running event loop)."""
        if self.settings.xds_server and any(t.startswith("xds:") for t in self.targets.values()):
            node = xds.install_bootstrap(self.settings.xds_server, zone=self.settings.xds_node_zone, tls=self.tls)
            log.info("proxyless upstream: xDS from %s as node %s", self.settings.xds_server, node or "(own bootstrap)")
        self._open()

    def _open(self) -> None:
        self._generation = self.tls.current().generation if self.tls is not None else 0
        channels: dict[str, grpc.aio.Channel] = {}
        for target in sorted(set(self.targets.values())):
            options = XDS_CHANNEL_OPTIONS if target.startswith("xds:") else CHANNEL_OPTIONS
            channel = open_channel(target, self.peers[target], self.tls, options)
            channel.get_state(try_to_connect=True)  # start connecting now, not on the first call
            channels[target] = channel
            log.info("upstream channel to %s", target)
        calls = {
            path: channels[self.targets[path]].unary_unary(
                path,
                request_serializer=rpc.input_type.SerializeToString,
                response_deserializer=rpc.output_type.FromString,
                _registered_method=True,
            )
            for path, rpc in self.rpcs.items()
        }
        self.channels, self.calls = channels, calls

    def _follow_rotation(self) -> None:
        """New channels once the certificate changed (a stat a second at most, mesh.credentials);
        the old ones close when their calls had time to end."""
        if self.tls is None or self.tls.current().generation == self._generation or not self.channels:
            return
        old = list(self.channels.values())
        self._open()
        self._retired.retire(*old)

    async def close(self, grace: float | None = None) -> None:
        self._retired.cancel()
        channels, self.channels, self.calls = self.channels, {}, {}
        await asyncio.gather(*(channel.close(grace) for channel in channels.values()))

    async def not_ready(self, wait_seconds: float) -> list[str]:
        """The targets whose channel did not become READY within `wait_seconds`."""

        async def connected(channel: grpc.aio.Channel) -> bool:
            if channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
                return True
            try:
                await asyncio.wait_for(channel.channel_ready(), wait_seconds)
            except TimeoutError:
                return False
            return True

        if not self.channels:
            return ["(not started)"]
        targets = list(self.channels)
        results = await asyncio.gather(*(connected(self.channels[t]) for t in targets))
        return [target for target, ok in zip(targets, results, strict=True) if not ok]

    async def call(
        self, rpc: Rpc, request: Message, metadata: Sequence[tuple[str, str]], deadline_seconds: float
    ) -> Message:
        self._follow_rotation()
        call = self.calls[rpc.path]
        try:
            if not tracing.active():
                response: Message = await call(request, metadata=metadata, timeout=deadline_seconds)
            else:
                with tracing.client_span(rpc.path) as trace_context:
                    response = await call(request, metadata=[*metadata, *trace_context], timeout=deadline_seconds)
        except grpc.aio.AioRpcError as error:
            raise Problem.from_rpc_error(error) from None
        return response

    def deadline(self, grpc_timeout: bytes | None) -> float:
        """The call's timeout: GATEWAY_CALL_TIMEOUT_SECONDS, shortened by a client `Grpc-Timeout`
        header (gRPC's format: up to 8 digits and a unit, e.g. `500m`); a malformed one is ignored."""
        timeout = self.settings.call_timeout_seconds
        if grpc_timeout is not None:
            match = _GRPC_TIMEOUT.fullmatch(grpc_timeout.decode("latin-1"))
            if match:
                timeout = min(timeout, int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)])
        return timeout


def call_metadata(headers: Mapping[bytes, bytes], request_id: str, client_ip: str | None) -> list[tuple[str, str]]:
    """The metadata of an upstream call: the forwarded headers, the request id, the client's IP."""
    metadata = [("x-request-id", request_id)]
    for header, key in (FORWARDED_WHEN_TRACING if tracing.active() else FORWARDED_HEADERS).items():
        raw = headers.get(header)
        if raw is not None and len(raw) <= MAX_TRACE_LENGTHS.get(key, len(raw)):
            metadata.append((key, _metadata_value(key, raw)))
    if client_ip:
        metadata.append(("x-forwarded-for", client_ip))
    return metadata


def _metadata_value(name: str, raw: bytes) -> str:
    # gRPC accepts printable ASCII only in text metadata; refusing beats silently dropping the
    # header (an idempotency key that vanished would make a retried write happen twice).
    if not raw.isascii() or not (text := raw.decode("ascii")).isprintable():
        raise Problem(400, "INVALID_HEADER", f"The {name} header must be printable ASCII.")
    return text
