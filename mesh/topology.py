"""The one registry of the mesh's services.

Everything that needs to know which services exist reads it from here: the Envoy config builder
(clusters, routes, health-check names), the stack (processes, databases, environment), the gateway's
`GATEWAY_PROTO_MODULES`, compose.yaml's test. Adding a service is one `ServiceSpec` entry below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service of the mesh, as the launcher and Envoy see it."""

    # Short name: Envoy cluster name, process/log name prefix, `<NAME>_TARGET` env var.
    name: str
    # Python module run as `python -m <module>` (serve) and `python -m <module> migrate`.
    module: str
    # Full proto name of the service: what Envoy's active gRPC health check asks for.
    proto_service: str
    # gRPC path prefixes (`/package.Service/Method`) Envoy routes to this service's cluster.
    route_prefixes: tuple[str, ...]
    # Database this service owns (the stack may append a suffix for test isolation).
    database: str
    # Generated modules whose `google.api.http`-annotated services the gateway exposes (one per
    # proto file of the service's package that has any).
    proto_modules: tuple[str, ...]
    # Instances started by `make up` and by the test stack (≥ 2 so one can be killed).
    instances: int = 2
    # Whether this service signs tokens (gets JWT_PRIVATE_KEY_FILE); every service verifies them.
    signs_tokens: bool = False


AUTH = ServiceSpec(
    name="auth",
    module="services.auth",
    proto_service="capsule.auth.v1.AuthService",
    # Server reflection lands on auth; every instance describes the whole mesh's catalog
    # (mesh/catalog.py), so `grpcurl list` through Envoy shows every service.
    route_prefixes=("/capsule.auth.v1.", "/grpc.reflection."),
    database="auth",
    proto_modules=("capsule.auth.v1.auth_pb2",),
    instances=2,
    signs_tokens=True,
)

RECIPIENTS = ServiceSpec(
    name="recipients",
    module="services.recipients",
    # Envoy health-checks the public API's name; the internal RelationshipService lives in the
    # same package and the same processes, so the one prefix routes both.
    proto_service="capsule.recipients.v1.RecipientsService",
    route_prefixes=("/capsule.recipients.v1.",),
    database="recipients",
    proto_modules=("capsule.recipients.v1.recipients_pb2", "capsule.recipients.v1.thoughts_pb2"),
    instances=2,
)

CAPSULES = ServiceSpec(
    name="capsules",
    module="services.capsules",
    # CapsulesService and ThemesService share the package and the processes: one prefix.
    proto_service="capsule.capsules.v1.CapsulesService",
    route_prefixes=("/capsule.capsules.v1.",),
    database="capsules",
    proto_modules=(
        "capsule.capsules.v1.capsules_pb2",
        "capsule.capsules.v1.self_letters_pb2",
        "capsule.capsules.v1.replies_pb2",
        "capsule.capsules.v1.shares_pb2",
        "capsule.capsules.v1.invites_pb2",
    ),
    instances=2,
)

NOTIFICATIONS = ServiceSpec(
    name="notifications",
    module="services.notifications",
    proto_service="capsule.notifications.v1.NotificationsService",
    route_prefixes=("/capsule.notifications.v1.",),
    database="notifications",
    proto_modules=("capsule.notifications.v1.notifications_pb2", "capsule.notifications.v1.devices_pb2"),
    instances=2,
)

SERVICES: tuple[ServiceSpec, ...] = (AUTH, RECIPIENTS, CAPSULES, NOTIFICATIONS)


def by_name(name: str, services: tuple[ServiceSpec, ...] = SERVICES) -> ServiceSpec:
    for spec in services:
        if spec.name == name:
            return spec
    raise KeyError(f"no service named {name!r} in the topology (known: {[s.name for s in services]})")


def gateway_proto_modules(services: tuple[ServiceSpec, ...] = SERVICES) -> str:
    """Value of GATEWAY_PROTO_MODULES: every service's annotated modules, in registry order."""
    return ",".join(module for spec in services for module in spec.proto_modules)
