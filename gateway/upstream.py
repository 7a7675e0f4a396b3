"""The gRPC side: long-lived channels, one pre-built callable per method, metadata, deadlines.

One `grpc.aio` channel per distinct target, opened at start-up and closed at shutdown (and opened
anew when the gateway's mesh certificate rotates: the old ones finish their calls, then close):
- proxyless (GATEWAY_XDS_SERVER set): `xds:///<proto package>` per service; gRPC's xDS client
  balances across the instances and applies the control plane's retry policy (xds.py), so
  retries are on in those channels (they also enable gRPC's transparent retries of calls that
  never reached a server). gRPC has no per-try timeout, so the gateway hedges idempotent calls
  itself, as Envoy does (`hedged`): a second call after mesh/timing.py's HEDGE_AFTER_S;
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
from collections.abc import Callable, Iterable, Mapping, Sequence

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter

from gateway import xds
from gateway.descriptors import Rpc
from gateway.problems import Problem
from gateway.settings import Settings
from mesh.catalog import retryable_methods
from mesh.credentials import MeshTLS, RetiredChannels, open_channel
from mesh.timing import HEDGE_AFTER_S
from services.common import tracing

log = logging.getLogger(__name__)

# When the gateway hedges a call still unanswered: HEDGE_AFTER_S after the first attempt, then
# after twice the previous delay each time (attempts at 0, 0.15, 0.45, 1.05 and 2.25 s).
HEDGE_DELAYS_S = tuple(HEDGE_AFTER_S * 2**n for n in range(4))
HEDGES = Counter(
    "gateway_upstream_hedges_total",
    "Second calls sent because the first was still unanswered after the hedge delay (proxyless only)",
    ["method"],
)

CHANNEL_OPTIONS: Sequence[tuple[str, int | str]] = (
    ("grpc.enable_retries", 0),
    # Notice a dead connection (a host cut off, Envoy restarted behind a NAT) within ~2 s while
    # calls are in flight: a PING a second, answered within a second, or the connection is closed
    # and its calls fail UNAVAILABLE — a write then gets its 503 (its client repeats it under its
    # Idempotency-Key) instead of hanging until the deadline (tests/netns: 6 s under a partition).
    # Only while calls are in flight; the services accept a PING every 0.5 s
    # (services/common/server.py), so a long call is never mistaken for a ping flood.
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 1_000),
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
        # Idempotent methods reached over a proxyless channel (Envoy hedges the others' itself).
        idempotent = retryable_methods()
        self.hedged = frozenset(
            path for path, target in self.targets.items() if target.startswith("xds:") and path in idempotent
        )
        self.hedge_budget = HedgeBudget()
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
            if rpc.path in self.hedged:
                response = await self._hedged_call(rpc, call, request, metadata, deadline_seconds)
            elif not tracing.active():
                response = await call(request, metadata=metadata, timeout=deadline_seconds)
            else:
                with tracing.client_span(rpc.path) as trace_context:
                    response = await call(request, metadata=[*metadata, *trace_context], timeout=deadline_seconds)
        except grpc.aio.AioRpcError as error:
            raise Problem.from_rpc_error(error) from None
        return response

    async def _hedged_call(
        self,
        rpc: Rpc,
        call: grpc.aio.UnaryUnaryMultiCallable,
        request: Message,
        metadata: Sequence[tuple[str, str]],
        deadline_seconds: float,
    ) -> Message:
        def send(context: Sequence[tuple[str, str]], timeout: float) -> grpc.aio.UnaryUnaryCall:
            return call(request, metadata=[*metadata, *context], timeout=timeout)

        if not tracing.active():
            return await hedged(lambda timeout: send((), timeout), deadline_seconds, rpc.path, self.hedge_budget)
        with tracing.client_span(rpc.path) as trace_context:
            return await hedged(
                lambda timeout: send(trace_context, timeout), deadline_seconds, rpc.path, self.hedge_budget
            )

    def deadline(self, grpc_timeout: bytes | None) -> float:
        """The call's timeout: GATEWAY_CALL_TIMEOUT_SECONDS, shortened by a client `Grpc-Timeout`
        header (gRPC's format: up to 8 digits and a unit, e.g. `500m`); a malformed one is ignored."""
        timeout = self.settings.call_timeout_seconds
        if grpc_timeout is not None:
            match = _GRPC_TIMEOUT.fullmatch(grpc_timeout.decode("latin-1"))
            if match:
                timeout = min(timeout, int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)])
        return timeout


# Status codes that say the attempt failed rather than answered: while another attempt is in
# flight, its answer is awaited instead. Any other status (NOT_FOUND, PERMISSION_DENIED...) is the
# service's answer, returned at once.
_NO_ANSWER = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class HedgeBudget:
    """Envoy's retry budget for the gateway's hedges: extra attempts in flight at most
    `percent` of the hedged calls in flight, and `minimum` whatever the volume. A mesh slow
    everywhere (overload) is then not sent several times its load."""

    def __init__(self, percent: float = 20.0, minimum: int = 10) -> None:
        self.percent = percent
        self.minimum = minimum
        self.calls = 0
        self.extra = 0

    def acquire(self) -> bool:
        if self.extra >= max(self.minimum, self.calls * self.percent / 100):
            return False
        self.extra += 1
        return True


async def hedged(
    send: Callable[[float], grpc.aio.UnaryUnaryCall],
    deadline_seconds: float,
    method: str,
    budget: HedgeBudget,
    delays: Sequence[float] = HEDGE_DELAYS_S,
) -> Message:
    """The first answer of `send(timeout)`'s call and of the hedges sent while none came: one
    after each of `delays` (the channel's balancer picks each one's instance), while the budget and
    the deadline allow. Answered, the others are cancelled. Attempts that fail without an answer
    (_NO_ANSWER) leave the others to answer; if all fail, the first one's error is raised.

    Several hedges, further and further apart, because gRPC cannot be told to avoid an instance:
    a hedge may land on the same bad one; the later ones land after its endpoint left the
    balancer (within 2 s of a partition). Only for idempotent methods: every attempt may run to
    completion on the server."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + deadline_seconds
    attempts = [send(deadline_seconds)]
    pending = list(attempts)
    errors: dict[int, grpc.aio.AioRpcError] = {}
    extra = 0
    budget.calls += 1
    try:
        for delay in (*delays, None):
            await _any_done(pending, delay)
            for finished in [attempt for attempt in pending if attempt.done()]:
                pending.remove(finished)
                try:
                    return await finished
                except grpc.aio.AioRpcError as error:
                    if error.code() not in _NO_ANSWER:
                        raise
                    errors[attempts.index(finished)] = error
            if not pending:
                raise errors[min(errors)]
            remaining = ends_at - loop.time()
            if delay is not None and remaining > 0 and budget.acquire():
                extra += 1
                HEDGES.labels(method).inc()
                hedge = send(remaining)
                attempts.append(hedge)
                pending.append(hedge)
        raise AssertionError("unreachable: the last wait has no timeout")  # pragma: no cover
    finally:
        budget.calls -= 1
        budget.extra -= extra
        for attempt in attempts:
            attempt.cancel()  # a finished call ignores it


async def _any_done(calls: Sequence[grpc.aio.UnaryUnaryCall], within: float | None) -> None:
    """Return once one of `calls` is done, or after `within` seconds (None: no limit)."""
    if any(call.done() for call in calls):
        return
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(*_: object) -> None:
        if not woken.done():
            woken.set_result(None)

    for call in calls:
        call.add_done_callback(wake)
    timer = loop.call_later(within, wake) if within is not None else None
    try:
        await woken
    finally:
        if timer is not None:
            timer.cancel()


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
