"""Server bootstrap shared by every service.

`ServiceHost` serves one service's gRPC API together with what every instance must offer
(SPEC §2): `grpc.health.v1.Health` per service name and overall, server reflection, an admin HTTP
port with `/metrics` and `/healthz`, the handler wrapper that maps domain errors to rich statuses and
records RED metrics, registration with the mesh's control plane when CONTROL_PLANE_TARGET is
set (services/common/registration.py), background jobs owned by the lifecycle (`add_background`,
services/common/background.py: started once SERVING), and a graceful stop on SIGTERM/SIGINT:

    NOT_SERVING, background jobs told to stop → deregister → wait until Envoy has drained the
    instance → stop(grace) for in-flight calls → background jobs awaited (BACKGROUND_STOP_SECONDS,
    then cancelled) → admin port closed → close pools → exit 0.

"Envoy has drained it": with a control plane, Deregister answers once every connected Envoy
acknowledged the endpoint set without this instance (EDS push + ACK, milliseconds; the control
plane bounds it to 1 s); a short `deregistered_drain` then covers calls already on the wire.
Without that confirmation (no control plane configured, or it is down), `drain_delay` is used: the
time Envoy's active health checks take to see NOT_SERVING (interval x unhealthy threshold + one
timeout). Both delays and the relations between them and the control plane's bounds:
mesh/timing.py, checked when the settings are read.

Health says SERVING only once the readiness check (e.g. the database answers) has passed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import sqlalchemy.exc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh.catalog import mesh_services, method_callers, needs_token
from mesh.credentials import MeshTLS, add_port, caller_workload
from services.common import admin_http, tracing
from services.common.background import BackgroundTasks, Job, cancel_and_wait
from services.common.clients import incoming_trace_context, serving_deadline
from services.common.errors import Internal, InvalidArgument, PermissionDenied, ServiceError
from services.common.logs import request_id_var, trace_id_from_traceparent, trace_id_var
from services.common.reflection import add_reflection
from services.common.registration import Registrar, advertised_host
from services.common.settings import ServiceSettings
from services.common.telemetry import RPC_LATENCY, RPC_REQUESTS
from services.common.tokens import Authenticator
from services.common.validation import Undecodable, lenient_parser, request_checker

log = logging.getLogger(__name__)

Attach = Callable[[grpc.aio.Server], None]
Closer = Callable[[], Awaitable[None]]


def instrument(servicer: Any, descriptor: ServiceDescriptor, *, identities: bool = False) -> Any:
    """Wraps every unary handler of `servicer` in place: request/trace ids into the log context,
    RED metrics, the caller's workload checked against the method's allowed callers when callers
    have identities (mutual TLS; mesh.catalog.method_callers, SPEC §12: whatever path the call took,
    Envoy's RBAC or a proxyless client's direct connection), the request's strings and enums
    checked (validation.request_checker), and ServiceError → status with google.rpc details;
    anything unexpected → INTERNAL, logged. Done once at registration rather than with a server
    interceptor, which would rebuild the handler on every call."""
    # A handler class keeps its Authenticator as `auth`: a request that breaks its declared rules is
    # refused as unauthenticated first when the method needs a token (401 before 400, as the
    # handler itself would have answered).
    authenticator = getattr(servicer, "auth", None)
    for method in descriptor.methods:
        if method.client_streaming or method.server_streaming:
            continue
        handler = _instrumented(
            descriptor.full_name,
            method.name,
            getattr(servicer, method.name),
            request_checker(method.input_type),
            method_callers(method) if identities else None,
            authenticator.require if isinstance(authenticator, Authenticator) and needs_token(method) else None,
        )
        # Tracing on: the call's server span around all of it (services/common/tracing.py).
        setattr(servicer, method.name, tracing.server_handler(f"/{descriptor.full_name}/{method.name}", handler))
    return servicer


def _instrumented(
    service: str,
    method: str,
    inner: Callable[[Any, Any], Awaitable[Any]],
    check: Callable[[Any], list[tuple[str, str]]] | None = None,
    callers: frozenset[str] | None = None,
    authenticate: Callable[[grpc.aio.ServicerContext], Awaitable[Any]] | None = None,
) -> Any:
    full_method = f"/{service}/{method}"
    latency = RPC_LATENCY.labels(service, method)
    handled_ok = RPC_REQUESTS.labels(service, method, "OK")

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "OK"
        remaining = context.time_remaining()
        if remaining is not None:  # calls made while serving this one get what is left of it
            serving_deadline.set(time.monotonic() + remaining)
        trace_context: list[tuple[str, str]] = []
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id":
                request_id_var.set(str(value))
            elif key == "traceparent":
                trace_id_var.set(trace_id_from_traceparent(str(value)))
                trace_context.append((key, str(value)))
            elif key == "tracestate":
                trace_context.append((key, str(value)))
        if trace_context:
            incoming_trace_context.set(tuple(trace_context))
        try:
            if callers is not None and (caller := caller_workload(context)) not in callers:
                raise PermissionDenied(
                    f"{caller or 'a caller without a mesh identity'} may not call {full_method}",
                    reason="CALLER_NOT_ALLOWED",
                )
            # SPEC §3 "Strings": NUL, lone surrogates and unknown enum numbers never reach a handler.
            if type(request) is Undecodable:
                raise request.error()
            if check is not None and (violations := check(request)):
                if authenticate is not None:
                    await authenticate(context)
                fields = ", ".join(dict.fromkeys(f for f, _ in violations))
                raise InvalidArgument(f"the request has invalid fields: {fields}", violations=violations)
            return await inner(request, context)
        except ServiceError as exc:
            code = exc.code.name
            await context.abort_with_status(exc.to_status())
        except grpc.aio.AbortError:
            code = context.code().name if context.code() else "UNKNOWN"  # type: ignore[union-attr]
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away (or its deadline passed): not a success
            raise
        except Exception as exc:
            code = "INTERNAL"
            log_unhandled(full_method, exc)
            await context.abort_with_status(Internal("internal error").to_status())
        finally:
            elapsed = time.perf_counter() - started
            (handled_ok if code == "OK" else RPC_REQUESTS.labels(service, method, code)).inc()
            latency.observe(elapsed)
            # A sampled call leaves one line, with its trace and span ids: from a trace to the
            # logs of each hop and back. Unsampled calls (and all of them, tracing off) log nothing.
            if tracing.recording():
                tracing.record_grpc_code(code)
                log.info(
                    "call handled",
                    extra={"fields": {"method": full_method, "code": code, "duration_ms": round(elapsed * 1000, 3)}},
                )

    return handler


def _register(descriptor: ServiceDescriptor, servicer: Any, server: grpc.aio.Server) -> None:
    handlers = {}
    for method in descriptor.methods:
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"{method.full_name}: only unary methods are served")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient_parser(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)


def log_unhandled(full_method: str, exc: BaseException) -> None:
    """Logs an unexpected error. A database error's text can quote the statement's parameters
    (asyncpg: "invalid input for query argument $1: '…'"), which are user data (SPEC §3 "Logs"):
    for those only the type, the SQLSTATE, the statement (SQLAlchemy's: its text, parameters bound
    apart) and the traceback's frames are logged."""
    if not isinstance(exc, _DATABASE_ERRORS):
        log.exception("unhandled error in %s", full_method)
        return
    orig = getattr(exc, "orig", None)
    fields = {
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "sqlstate": getattr(exc, "sqlstate", None) or getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None),
        "statement": " ".join(str(getattr(exc, "statement", "") or "").split())[:300],
        "traceback": "".join(traceback.format_tb(exc.__traceback__)),
    }
    log.error("unhandled database error in %s", full_method, extra={"fields": fields})


# Errors raised by the database layers: SQLAlchemy's (statement and parameters in their text, the
# latter hidden by the engine's hide_parameters) and asyncpg's own (hot paths use it directly).
_DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class ServiceHost:
    def __init__(self, settings: ServiceSettings, *, tls: MeshTLS | None = None) -> None:
        """`tls`: this instance's mesh identity (mutual TLS on its port, callers authorized by
        theirs); None serves plain text with every caller trusted — MESH_PLAINTEXT=1, decided by
        services.common.foundation, or an in-process test."""
        self.settings = settings
        self.tls = tls
        self.health = health_aio.HealthServicer()
        self._services: list[ServiceDescriptor] = []
        self._service_names: list[str] = []
        self._registrations: list[Attach] = []
        self._closers: list[Closer] = []
        self._serving = False
        self.registrar: Registrar | None = None
        self.background = BackgroundTasks()
        self.admin: admin_http.AdminServer | None = None

    def add_service(self, descriptor: ServiceDescriptor, servicer: Any) -> None:
        """Serve `servicer` (instrumented, see `instrument`), with handlers built from the service's
        descriptor rather than by the generated add_<Service>Servicer_to_server, so that a request
        protobuf cannot parse reaches the wrapper (validation.lenient_parser) instead of grpc's
        UNKNOWN answer."""
        instrument(servicer, descriptor, identities=self.tls is not None)
        self._services.append(descriptor)
        self._service_names.append(descriptor.full_name)
        self._registrations.append(functools.partial(_register, descriptor, servicer))

    def on_close(self, closer: Closer) -> None:
        """Closers run after the gRPC server and the background jobs stopped, last added first."""
        self._closers.append(closer)

    def add_background(self, name: str, job: Job) -> None:
        """Run `job(stop)` while the instance serves: started once health says SERVING, told to
        stop (the event is set) when the graceful stop begins, awaited after the gRPC server
        stopped and before the closers run; restarted with back-off if it crashes."""
        self.background.add(name, job)

    async def run(self, ready: Callable[[], Awaitable[None]], stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT, or until `stop` is set when given (then no signal handler
        is installed: the caller owns the signals)."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                # The gateway PINGs every second while it has calls in flight, to notice a cut
                # connection fast (gateway/upstream.py); a long call must not earn it a GOAWAY.
                ("grpc.http2.min_ping_interval_without_data_ms", 500),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ],
        )
        for register in self._registrations:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        # Reflection describes the whole mesh, not only this service (mesh.catalog), as much of it
        # as the caller may see (services/common/reflection.py).
        add_reflection(server, [*self._services, *mesh_services()], identities=self.tls is not None)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        if add_port(server, self.settings.grpc_listen, self.tls) == 0:
            raise SystemExit(f"cannot listen on {self.settings.grpc_listen}")
        await server.start()
        self.admin = admin = await self._start_admin()

        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)

        readiness = asyncio.create_task(self._become_ready(ready, stop))
        log.info(
            "serving",
            extra={
                "fields": {
                    "grpc": self.settings.grpc_listen,
                    "admin": self.settings.admin_listen,
                    "services": self._service_names,
                }
            },
        )
        await stop.wait()
        await cancel_and_wait(readiness)

        log.info("stopping: reporting NOT_SERVING and draining")
        self._serving = False
        self.background.signal_stop()  # they finish their pass while the instance drains
        await self.health.enter_graceful_shutdown()
        drained = False
        if self.registrar is not None:
            drained = await self.registrar.deregister()
        # Production behaviour, not test synchronisation: Envoy must have stopped sending new calls
        # here before the listener closes (see the module doc for both delays).
        delay = self.settings.deregistered_drain_seconds if drained else self.settings.drain_delay_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        await server.stop(self.settings.shutdown_grace_seconds)
        await self.background.stop(self.settings.background_stop_seconds)
        await admin.close()
        if self.registrar is not None:
            await self.registrar.close()
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("error while closing")
        log.info("stopped", extra={"fields": {"drained_by_control_plane": drained}})

    async def _become_ready(self, ready: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                await ready()
            except Exception as exc:
                log.warning("not ready yet", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            await self._set_all(health_pb2.HealthCheckResponse.SERVING)
            self._serving = True
            self.background.start()
            await self._start_registration()
            return

    async def _start_registration(self) -> None:
        """Register with the control plane (if configured) now that health says SERVING."""
        target = self.settings.control_plane_target
        if not target:
            return
        from capsule.mesh.v1 import registry_pb2

        host, _, port = (self.settings.advertise_address or self.settings.grpc_listen).rpartition(":")
        metadata = {"instance": self.settings.instance_name} if self.settings.instance_name else {}
        instance = registry_pb2.ServiceInstance(
            service=self.settings.name,
            # A name look-up may block (DNS in compose): off the event loop.
            host=await asyncio.to_thread(advertised_host, host),
            port=int(port),
            zone=self.settings.zone,
            metadata=metadata,
        )
        self.registrar = Registrar(target, instance, tls=self.tls)
        self.registrar.start()

    async def _set_all(self, status: int) -> None:
        for name in ("", *self._service_names):
            await self.health.set(name, status)  # type: ignore[arg-type]

    async def _start_admin(self) -> admin_http.AdminServer:
        return await admin_http.serve(self.settings.admin_listen, self._admin_page)

    def _admin_page(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest()
        if path == "/healthz":
            return (200, "text/plain", b"ok\n") if self._serving else (503, "text/plain", b"not serving\n")
        return 404, "text/plain", b"not found\n"
