"""OpenTelemetry tracing for every Python process of the mesh (the services and the gateway).

Configured by OpenTelemetry's standard environment variables, read by its SDK:

    OTEL_EXPORTER_OTLP_ENDPOINT   where spans go, over OTLP/gRPC (http://host:4317: plain text).
                                  Unset: tracing is off (see below).
    OTEL_SERVICE_NAME             the process's name in the traces (the launcher sets it per
                                  workload; `setup`'s argument is the fallback)
    OTEL_TRACES_SAMPLER(_ARG)     e.g. parentbased_traceidratio and 0.1 (the SDK's default:
                                  parentbased_always_on)
    OTEL_BSP_*                    the batch span processor (delay, queue and batch sizes)

On, `setup` installs a tracer provider exporting in batches, and these spans, joined by W3C trace
context (`traceparent`/`tracestate`) on every hop, so a request is one trace: gateway → Envoy →
service → Envoy → service:
- the gateway's HTTP server span per API request (`http_server_span`, gateway/app.py; probes,
  /metrics and /openapi.json get none) and its upstream call's client span (`client_span`,
  gateway/upstream.py);
- the services' gRPC server spans (`server_handler`, applied by services/common/server.py's handler
  wrapper; health checks and reflection are not wrapped, so not traced);
- the services' gRPC client spans (opentelemetry-instrumentation-grpc's channel interceptors, which
  inject the context into every outgoing call), asyncpg and Redis client spans (theirs too).
The server and gateway spans are made here, in wrappers the code already has, rather than by the
library's server interceptor and ASGI middleware: those cost more than the spans (measured; the
aio server interceptor rebuilds the handler on every call). JSON log lines written in a span carry
its trace and span ids (services.common.logs).

Off (no endpoint, or OTEL_SDK_DISABLED=true): nothing of OpenTelemetry is imported, no provider,
no instrumentation; what is left is a module global read per call (`recording`). Log lines then
carry the trace id of the incoming `traceparent` (services/common/server.py), and services pass the
incoming trace context on in their own calls (services/common/clients.py) so the ids still match.

A trace starts only where a request enters the mesh: a client span without a parent (a Redis or
database call of a background job, the change feed, the registration stream) is never recorded
(`_request_rooted`), or every heartbeat and poll would be a trace of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from services.common import logs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

# gRPC services whose calls get no client span: the registration stream with the control plane
# (and health or reflection, should a service call them) would be traces of their own.
UNTRACED_GRPC_SERVICES = ("grpc.health.v1.", "grpc.reflection.", "capsule.mesh.v1.")

_provider: TracerProvider | None = None
# Made once by `setup`: asking the provider for a tracer per call cost the gateway ~5 % of its CPU.
_http_tracer: Any = None
_grpc_tracer: Any = None


def otlp_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """Where spans go (the traces' own variable first), "" when tracing is off: no endpoint, or
    the SDK switched off (OTEL_SDK_DISABLED=true). Also what Envoy is configured with."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether tracing is configured (see otlp_endpoint)."""
    return bool(otlp_endpoint(environ))


def active() -> bool:
    """Whether this process traces (`setup` installed the provider)."""
    return _provider is not None


def setup(service_name: str, *, grpc_client: bool = True) -> bool:
    """Install tracing when configured (see the module doc); returns whether it did. Call once at
    start-up, before any gRPC channel, database pool or Redis client exists and before the
    services are registered: the instrumentations patch constructors, the server wrapper asks
    `active()` once. `service_name` applies when OTEL_SERVICE_NAME is unset. grpc_client: the
    interceptors on every gRPC channel (the gateway makes its client spans itself)."""
    global _provider, _http_tracer, _grpc_tracer
    if _provider is not None or not enabled():
        return _provider is not None

    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_prefix
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, which win over this.
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    # The provider's default sampler is the one OTEL_TRACES_SAMPLER(_ARG) names.
    provider = TracerProvider(resource=resource)
    provider.sampler = _request_rooted(provider.sampler)
    # The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _INSECURE; its
    # channel is a synchronous one, which the aio client instrumentation below leaves alone.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)

    if grpc_client:
        untraced = negate(any_of(*(service_prefix(name) for name in UNTRACED_GRPC_SERVICES)))
        GrpcAioInstrumentorClient(filter_=untraced).instrument(tracer_provider=provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    logs.use_span_ids(_current_ids)
    _http_tracer = provider.get_tracer("capsule-mesh.http")
    _grpc_tracer = provider.get_tracer("capsule-mesh.grpc")
    _provider = provider
    fields = {"service_name": resource.attributes.get(SERVICE_NAME), "sampler": provider.sampler.get_description()}
    log.info("tracing on", extra={"fields": fields})
    return True


@contextlib.contextmanager
def http_server_span(scope: Mapping[str, Any], route: str | None) -> Iterator[None]:
    """The SERVER span of one HTTP request (an ASGI `scope`) to `route` (its template, None for a
    path the API does not serve that way), continuing the W3C trace context of its headers. The
    handler records the response's status (`record_http_status`)."""
    from opentelemetry import propagate, trace

    carrier = {}
    for name, value in scope["headers"]:
        if name in _TRACE_HEADERS:
            carrier[name.decode()] = value.decode("latin-1")
    method = scope["method"]
    attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope.get("scheme", "http")}
    if route is not None:
        attributes["http.route"] = route
    with _http_tracer.start_as_current_span(
        f"{method} {route}" if route else method,
        context=propagate.extract(carrier) if carrier else None,
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
    ):
        yield


_TRACE_HEADERS = frozenset(key.encode() for key in ("traceparent", "tracestate", "baggage"))


def record_http_status(status: int) -> None:
    """The response's status on the current (HTTP server) span; 5xx is an error (the server's)."""
    from opentelemetry import trace
    from opentelemetry.trace.status import Status, StatusCode

    span = trace.get_current_span()
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def server_handler(full_method: str, handler: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """`handler` (a unary gRPC method's, `full_method` = /package.Service/Method) inside a SERVER
    span continuing the caller's trace context; `handler` itself when tracing is off. The status is
    left to the handler (`record_grpc_code`): an abort is an exception here, not always an error."""
    if _provider is None:
        return handler
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace

    tracer = _grpc_tracer
    extract = propagate.extract
    server = trace.SpanKind.SERVER
    current_span = trace.get_current_span
    service, _, method = full_method[1:].partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    name = full_method[1:]

    async def traced(request: Any, context: Any) -> Any:
        carrier = {key: value for key, value in context.invocation_metadata() or () if key in _TRACE_KEYS}
        parent = extract(carrier) if carrier else None
        if parent is not None and not current_span(parent).get_span_context().trace_flags.sampled:
            # The caller decided not to sample this trace: no span of ours would be recorded. Its
            # context alone is carried on (the calls made from here pass "not sampled" along),
            # which saves the span's ids, sampler and attributes on most calls at low ratios.
            token = otel_context.attach(parent)
            try:
                return await handler(request, context)
            finally:
                otel_context.detach(token)
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=server,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ):
            return await handler(request, context)

    return traced


# What the W3C propagators (trace context and baggage, OTel's default) read.
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


@contextlib.contextmanager
def client_span(full_method: str) -> Iterator[list[tuple[str, str]]]:
    """A CLIENT span around one outgoing unary call; yields the metadata that carries its context
    (W3C trace context), to add to the call's. Tracing off: no span, nothing to add. A failed call
    (grpc.aio.AioRpcError) leaves its status code on the span."""
    if _provider is None:
        yield []
        return
    import grpc
    from opentelemetry import propagate, trace

    if not trace.get_current_span().is_recording():
        # Not sampled (or no request around it): the span would not be recorded; the current
        # context alone goes with the call, so the callee knows the trace is not sampled.
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield list(carrier.items())
        return
    service, _, method = full_method[1:].partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    with _grpc_tracer.start_as_current_span(
        full_method[1:], kind=trace.SpanKind.CLIENT, attributes=attributes, record_exception=False
    ) as span:
        carrier = {}
        propagate.inject(carrier)
        try:
            yield list(carrier.items())
        except grpc.aio.AioRpcError as error:
            span.set_attribute("rpc.grpc.status_code", error.code().value[0])
            raise
        span.set_attribute("rpc.grpc.status_code", 0)


def recording() -> bool:
    """Whether the current span is being recorded (tracing on and this request sampled)."""
    if _provider is None:
        return False
    from opentelemetry import trace

    return trace.get_current_span().is_recording()


# The codes that are the server's failure (OpenTelemetry's gRPC conventions): the server span's
# status is then an error. The others (NOT_FOUND, INVALID_ARGUMENT…) are the caller's.
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def record_grpc_code(code: str) -> None:
    """The call's gRPC status (a grpc.StatusCode name) on the current span, when it records: the
    instrumentation sees aborts by `abort` only, and the handler wrapper answers with
    `abort_with_status` (rich error details)."""
    if _provider is None:
        return
    import grpc
    from opentelemetry import trace
    from opentelemetry.trace.status import Status, StatusCode

    span = trace.get_current_span()
    if not span.is_recording():
        return
    status = grpc.StatusCode[code] if code in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code))


def shutdown() -> None:
    """Export what is still buffered (blocking: run it off the event loop), then stop."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def _current_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def _request_rooted(delegate: Any) -> Any:
    """`delegate` (the configured sampler), except that a client span without a parent is dropped:
    only a request's entry into the mesh (a server span) or a span under one starts a trace."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind, get_current_span

    class RequestRooted(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Any] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if kind is SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"RequestRooted{{{delegate.get_description()}}}"

    return RequestRooted()
