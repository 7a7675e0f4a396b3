"""One `POST /v1/capsules` through the whole mesh leaves one trace (SPEC §9 "Observability"):

    gateway (HTTP server span → gRPC client span) → Envoy (server, upstream client) → capsules
    (gRPC server span → gRPC client span) → Envoy (server, upstream client) → recipients (gRPC
    server span), and a Postgres (asyncpg) span under a service's server span,

every child's parent a span of the hop before, exported over OTLP/gRPC to a real receiver in this
process (opentelemetry-proto's TraceService); and the JSON log lines of the gateway, capsules and
recipients for that request carry the trace id (with the span id), Envoy's access log the trace
context it forwarded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from controlplane import resources as rs
from controlplane.snapshot import MeshSnapshots
from envoy.config.trace.v3 import opentelemetry_pb2 as otel_tracer_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
from mesh import envoy_config
from services.common import logs, tracing
from services.common.clients import forward_metadata, incoming_trace_context
from tests.capsules.helpers import eventually, pair, send
from tests.conftest import CAPSULE_LEAD_SECONDS, start_test_stack

pytestmark = pytest.mark.slow(20)

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
# How long the spans may take to arrive: the services' batch delay is set low below, Envoy's
# OpenTelemetry tracer flushes every 5 s (its default).
ARRIVAL_SECONDS = 30.0


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span and wakes whoever waits for some."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = asyncio.Condition()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        async with self.changed:
            self.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, found: Callable[[list[Span]], Any], within: float) -> Any:
        """The first truthy `found(spans)`, re-checked after each export."""
        async with self.changed:
            result = None

            def check() -> bool:
                nonlocal result
                result = found(list(self.spans))
                return bool(result)

            await asyncio.wait_for(self.changed.wait_for(check), within)
            return result


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(None)


@pytest.fixture(scope="module")
async def traced(infra: infra_mod.Infra, jwt_keys: KeyPair, receiver: tuple[Receiver, int]) -> AsyncIterator[Stack]:
    _, port = receiver
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        # Export within 100 ms of a span's end: the test waits on the receiver, not on a timer.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    # In a thread: the receiver answers on this event loop while the stack starts.
    stack = await asyncio.to_thread(
        start_test_stack,
        infra,
        jwt_keys,
        env=otel,
        # Through Envoy (not proxyless), so that its spans are on the gateway's hop too.
        gateway_proxyless=False,
        service_env={"CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS)},
    )
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.close)


def _chain_to_root(spans: dict[str, Span], leaf: Span) -> list[Span]:
    """leaf, its parent, its parent's parent… as far as the trace holds them."""
    chain = [leaf]
    while chain[-1].parent_id in spans:
        chain.append(spans[chain[-1].parent_id])
    return chain


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


async def test_one_request_is_one_trace_across_gateway_envoy_and_services(
    traced: Stack, receiver: tuple[Receiver, int]
) -> None:
    spans_seen, _ = receiver
    async with httpx.AsyncClient(base_url=traced.gateway_url, timeout=30.0) as api:
        sender, _, recipient_id = await pair(api)
        # The client's own trace context: the request's spans continue it.
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        api.headers["traceparent"] = f"00-{trace_id}-{client_span}-01"
        created = await send(api, sender, recipient_id)
        assert created.status_code == 200, created.text

    def recipients_leg(spans: list[Span]) -> list[Span] | None:
        """The chain from recipients' GetRelationship server span up to the gateway's request
        span, once every span of it has arrived."""
        mine = {s.span_id: s for s in spans if s.trace_id == trace_id}
        for span in mine.values():
            if span.service == "recipients" and span.kind == SERVER and span.name.endswith("/GetRelationship"):
                chain = _chain_to_root(mine, span)
                if chain[-1].parent_id == client_span:
                    return chain
        return None

    chain = await spans_seen.wait_for(recipients_leg, ARRIVAL_SECONDS)
    path = [(s.service, s.kind) for s in reversed(chain)]
    assert path == [
        ("gateway", SERVER),  # POST /v1/capsules
        ("gateway", CLIENT),  # CreateCapsule
        ("envoy", SERVER),  # the call as Envoy received it
        ("envoy", CLIENT),  # its try to a capsules instance
        ("capsules", SERVER),  # CreateCapsule
        ("capsules", CLIENT),  # GetRelationship
        ("envoy", SERVER),
        ("envoy", CLIENT),
        ("recipients", SERVER),  # GetRelationship
    ], [(s.service, s.name) for s in reversed(chain)]
    assert chain[-2].name.endswith("/CreateCapsule") and chain[4].name.endswith("/CreateCapsule")
    assert chain[3].name.endswith("/GetRelationship")
    # The services' server spans carry the call's gRPC status (set by the handler wrapper).
    assert chain[4].attributes.get("rpc.grpc.status_code") == 0
    assert chain[0].attributes.get("rpc.grpc.status_code") == 0

    def database_span(spans: list[Span]) -> Span | None:
        """A Postgres span of a service, under that service's server span of this trace."""
        mine = {s.span_id: s for s in spans if s.trace_id == trace_id}
        for span in mine.values():
            if span.kind == CLIENT and span.attributes.get("db.system", span.attributes.get("db.system.name")) == (
                "postgresql"
            ):
                parent = mine.get(span.parent_id)
                if parent is not None and parent.service == span.service and parent.kind == SERVER:
                    return span
        return None

    postgres = await spans_seen.wait_for(database_span, ARRIVAL_SECONDS)
    assert postgres.service in ("capsules", "recipients")

    # The JSON logs of each process for this request carry its trace id, and the span id of the
    # span they were written in (one of the trace's).
    span_ids = {s.span_id for s in spans_seen.spans if s.trace_id == trace_id}
    processes = {
        "gateway": ["gateway"],
        **{name: [inst.name for inst in traced.instances[name]] for name in ("capsules", "recipients")},
    }
    for workload, names in processes.items():
        lines = [
            line for name in names for line in _log_lines(traced.log_path(name)) if line.get("trace_id") == trace_id
        ]
        assert lines, f"no log line of {workload} ({', '.join(names)}) carries the trace id"
        assert all(line.get("span_id") in span_ids for line in lines), (workload, lines)

    # Envoy's access log: the trace context each call arrived with.
    async def envoy_logged() -> bool | None:
        text = traced.log_path("envoy").read_text(errors="replace")
        return True if f"-{trace_id}-" in text else None

    await eventually(envoy_logged, within=ARRIVAL_SECONDS)


# --- without the mesh: Envoy's configuration, and tracing off ---------------------------------------

OTLP = "http://127.0.0.1:4317"


def _listener_hcm(listener: Any) -> Any:
    message = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(message)
    return message


def test_envoy_traces_to_the_otlp_endpoint_only_when_one_is_set(tmp_path: Path) -> None:
    args: dict[str, Any] = {"listen": ("127.0.0.1", 10000), "admin": ("127.0.0.1", 9901), "endpoints": {}}
    traced = envoy_config.build_bootstrap(**args, otlp_endpoint=OTLP)
    hcm = _listener_hcm(traced.static_resources.listeners[0])
    assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
    otel = otel_tracer_pb2.OpenTelemetryConfig()
    hcm.tracing.provider.typed_config.Unpack(otel)
    assert otel.grpc_service.envoy_grpc.cluster_name == envoy_config.OTEL_CLUSTER
    assert otel.service_name == "envoy"
    assert hcm.tracing.spawn_upstream_span.value
    # x-request-id is the gateway's, unchanged: the services log the same one.
    request_id = uuid_pb2.UuidRequestIdConfig()
    hcm.request_id_extension.typed_config.Unpack(request_id)
    assert request_id.pack_trace_reason.value is False
    (collector,) = [c for c in traced.static_resources.clusters if c.name == envoy_config.OTEL_CLUSTER]
    address = collector.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 4317)

    # Real Envoy accepts it (validate mode: the configuration, no listener bound).
    path = tmp_path / "bootstrap.json"
    envoy_config.write_bootstrap(traced, path)
    envoy = str(Path(sys.executable).parent / "envoy")
    checked = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--base-id", "31014", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr

    plain = envoy_config.build_bootstrap(**args)
    assert not _listener_hcm(plain.static_resources.listeners[0]).HasField("tracing")
    assert envoy_config.OTEL_CLUSTER not in {c.name for c in plain.static_resources.clusters}


def test_the_control_plane_serves_envoy_tracing_with_the_collector_cluster() -> None:
    snapshots = MeshSnapshots(listen=("127.0.0.1", 10000), idempotent_methods=frozenset(), otlp_endpoint=OTLP)
    envoy, _ = snapshots.build({})  # the consistency checks passed
    assert envoy_config.OTEL_CLUSTER in envoy.resources[rs.CLUSTER]
    (listener,) = envoy.resources[rs.LISTENER].values()
    assert _listener_hcm(listener).tracing.provider.name == "envoy.tracers.opentelemetry"
    untraced, _ = MeshSnapshots(listen=("127.0.0.1", 10000), idempotent_methods=frozenset()).build({})
    assert envoy_config.OTEL_CLUSTER not in untraced.resources[rs.CLUSTER]


@pytest.mark.parametrize(
    ("environ", "percent"),
    [
        ({}, 100.0),  # the SDK's default sampler: every trace
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, 100.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
    ],
)
def test_envoy_starts_traces_at_the_services_ratio(environ: dict[str, str], percent: float) -> None:
    """A call that reaches Envoy without a traceparent (an operator's grpcurl) is sampled as the
    services would sample it, not always."""
    assert envoy_config.sampling_percent(environ) == pytest.approx(percent)


def test_envoy_listener_carries_the_sampling_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert envoy_config.tracing_config().random_sampling.value == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("http://collector:4317", ("collector", 4317)),
        ("127.0.0.1:14317", ("127.0.0.1", 14317)),
        ("http://h", ("h", 4317)),
    ],
)
def test_otlp_address(endpoint: str, address: tuple[str, int]) -> None:
    assert envoy_config.otlp_address(endpoint) == address


def test_an_https_endpoint_is_refused_for_envoy() -> None:
    with pytest.raises(ValueError, match="http://"):
        envoy_config.otlp_address("https://collector:4317")


def test_the_endpoint_and_the_sdk_switch_decide() -> None:
    assert tracing.otlp_endpoint({}) == ""
    assert tracing.otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": OTLP}) == OTLP
    assert (
        tracing.otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": OTLP, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "h:1"})
        == "h:1"
    )
    assert tracing.otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": OTLP, "OTEL_SDK_DISABLED": "true"}) == ""


def test_tracing_off_installs_nothing() -> None:
    """No endpoint: setup does nothing, OpenTelemetry's SDK and instrumentations are not even
    imported, gRPC's constructors are gRPC's own (a fresh interpreter: this one imported the proto
    package for the receiver)."""
    code = (
        "import sys, grpc\n"
        "from services.common import tracing\n"
        "original = grpc.aio.server, grpc.aio.secure_channel\n"
        "assert tracing.setup('x') is False and not tracing.active() and not tracing.recording()\n"
        "assert (grpc.aio.server, grpc.aio.secure_channel) == original\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr


def test_with_tracing_off_services_pass_the_incoming_trace_context_on() -> None:
    assert not tracing.active()
    context = (("traceparent", f"00-{'a' * 32}-{'b' * 16}-01"), ("tracestate", "k=v"))
    token = incoming_trace_context.set(context)
    try:
        metadata = forward_metadata("tok", "rid")
    finally:
        incoming_trace_context.reset(token)
    assert metadata == (("authorization", "Bearer tok"), ("x-request-id", "rid"), *context)


def test_log_lines_take_the_span_ids_when_tracing_installs_the_look_up() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    formatter = logs.JsonFormatter()
    token = logs.trace_id_var.set("f" * 32)
    try:
        assert json.loads(formatter.format(record))["trace_id"] == "f" * 32  # from traceparent
        logs.use_span_ids(lambda: ("1" * 32, "2" * 16))
        line = json.loads(formatter.format(record))
        assert (line["trace_id"], line["span_id"]) == ("1" * 32, "2" * 16)
        logs.use_span_ids(lambda: None)  # outside a span: the traceparent's
        assert json.loads(formatter.format(record))["trace_id"] == "f" * 32
    finally:
        logs.use_span_ids(None)
        logs.trace_id_var.reset(token)
