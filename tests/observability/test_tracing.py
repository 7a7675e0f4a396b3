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
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
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
