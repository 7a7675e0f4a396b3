"""What the protos declare about the mesh's services and methods, read from the generated
descriptors: the one home of that knowledge, so that no other part names a path or an RPC.

- Which services make up the mesh (server reflection, below).
- Which methods are safe to retry (`option idempotency_level`): Envoy's retry policy.
- Each method's route policy, declared with our own method options
  (protos/capsule/common/v1/options.proto): how the gateway marks its GET answers for HTTP caches
  (`http_cache`), and whether it is the log-in whose attempts are limited per account
  (`rate_limit`). The gateway reads them once, at start-up, for the methods it serves.

Envoy routes server reflection to one service's instances, yet `grpcurl list` through Envoy must
show every service of the mesh (and `describe` any of them), each of which Envoy then reaches by
its name. So every instance's reflection describes the whole catalog: the services of every
generated `capsule.*` proto module, except the mesh's own control-plane API (`capsule.mesh.*`,
spoken only between instances and the control plane, never routed by Envoy).

The generated stubs are imported where they are used: importing this module needs none of them.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from mesh.pki import GATEWAY, OPERATOR

if TYPE_CHECKING:
    from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

INTERNAL_PACKAGES = ("capsule.mesh.",)


@functools.cache
def mesh_service_names() -> tuple[str, ...]:
    """Full names of every service in the generated stubs (imported here so reflection can
    describe them), sorted."""
    import capsule  # the generated package (gen/capsule), a namespace package

    names: set[str] = set()
    # The generated folders have no __init__.py (namespace packages), which pkgutil does not walk.
    modules = {
        "capsule." + ".".join(path.relative_to(root).with_suffix("").parts)
        for root in map(Path, capsule.__path__)
        for path in root.rglob("*_pb2.py")
    }
    for name in sorted(modules):
        module = importlib.import_module(name)
        for service in module.DESCRIPTOR.services_by_name.values():
            if not service.full_name.startswith(INTERNAL_PACKAGES):
                names.add(service.full_name)
    return tuple(sorted(names))


def mesh_services() -> list[ServiceDescriptor]:
    """The descriptors of mesh_service_names(), in that order."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    return [pool.FindServiceByName(name) for name in mesh_service_names()]


@functools.cache
def retryable_methods() -> frozenset[str]:
    """gRPC paths (`/package.Service/Method`) of every method its proto declares without side
    effects or idempotent (`option idempotency_level = …`): Envoy may retry those after they
    reached a server; any other call only when it never got there."""
    from google.protobuf.descriptor_pb2 import MethodOptions

    safe = (MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT)
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for service in mesh_services()
        for method in service.methods
        if method.GetOptions().idempotency_level in safe
    )


# --- route policies: our own method options ----------------------------------------------------


class OptionError(ValueError):
    """A method option that cannot be honoured as declared; whoever reads it fails at start-up."""


@dataclass(frozen=True)
class HttpCaching:
    """`option (capsule.common.v1.http_cache)`: who may keep a 200 answer to GET, and how long."""

    public: bool  # any cache may keep it; else only the caller's own (unspecified: private)
    max_age_seconds: int


@dataclass(frozen=True)
class LogIn:
    """`option (capsule.common.v1.rate_limit) = {login: true, account_fields: [...]}`: the method is
    a log-in attempt, limited per client IP and account too."""

    account_fields: tuple[str, ...]  # proto field names of the request, in the declared order
    # The JSON body keys that carry them, in order: each field's lowerCamelCase name, then its
    # proto name where that differs (proto3 JSON accepts both spellings).
    json_keys: tuple[str, ...]


@dataclass(frozen=True)
class MethodPolicy:
    """Every route policy one method declares; None where it declares nothing."""

    http_cache: HttpCaching | None = None
    login: LogIn | None = None
    # `(capsule.common.v1.anonymous)`: the method needs no access token.
    anonymous: bool = False


NO_POLICY = MethodPolicy()


def method_policy(method: MethodDescriptor) -> MethodPolicy:
    """The route policy `method`'s proto declares (NO_POLICY: none). OptionError when an option
    cannot apply to the method (an account field its request does not have, ...)."""
    from capsule.common.v1 import options_pb2  # registers the extensions read below

    options = method.GetOptions()
    http_cache = login = None
    if options.HasExtension(options_pb2.http_cache):
        cache = options.Extensions[options_pb2.http_cache]
        public = cache.visibility == options_pb2.HttpCachePolicy.VISIBILITY_PUBLIC
        http_cache = HttpCaching(public=public, max_age_seconds=cache.max_age_seconds)
    if options.HasExtension(options_pb2.rate_limit):
        limit = options.Extensions[options_pb2.rate_limit]
        login = _login(method, limit.login, tuple(limit.account_fields))
    anonymous = options.Extensions[options_pb2.anonymous]
    if http_cache is None and login is None and not anonymous:
        return NO_POLICY
    return MethodPolicy(http_cache=http_cache, login=login, anonymous=anonymous)


def _login(method: MethodDescriptor, is_login: bool, account_fields: tuple[str, ...]) -> LogIn | None:
    from google.protobuf.descriptor import FieldDescriptor

    where = f"{method.full_name} (capsule.common.v1.rate_limit)"
    if not is_login:
        if account_fields:
            raise OptionError(f"{where}: account_fields are only read for a log-in (login: true)")
        return None
    if not account_fields:
        raise OptionError(f"{where}: a log-in must name its account_fields")
    keys: list[str] = []
    for name in account_fields:
        field = method.input_type.fields_by_name.get(name)
        if field is None or field.is_repeated or field.type != FieldDescriptor.TYPE_STRING:
            raise OptionError(f"{where}: account field {name!r} is not a string field of {method.input_type.full_name}")
        keys.extend(key for key in (field.json_name, field.name) if key not in keys)
    return LogIn(account_fields=account_fields, json_keys=tuple(keys))


@functools.cache
def declared_policies() -> Mapping[str, MethodPolicy]:
    """gRPC path → route policy, for every method of the mesh's services that declares one."""
    declared = {
        f"/{service.full_name}/{method.name}": method_policy(method)
        for service in mesh_services()
        for method in service.methods
    }
    return MappingProxyType({path: policy for path, policy in declared.items() if policy != NO_POLICY})


# --- who may call what (SPEC §12) ----------------------------------------------------------------

# The workloads that call public methods (those with a `google.api.http` rule): the gateway on its
# clients' behalf, and operators (grpcurl with the operator certificate).
PUBLIC_CALLERS = frozenset({GATEWAY, OPERATOR})
# Paths every workload with a mesh certificate may call: server reflection (each instance lists
# what the caller may call, see services/common/server.py) and health.
OPEN_PREFIXES = ("/grpc.reflection.", "/grpc.health.v1.Health/")


def method_callers(method: MethodDescriptor) -> frozenset[str]:
    """The workloads allowed to call `method`: PUBLIC_CALLERS when it has an HTTP rule, plus the
    workloads its `(capsule.common.v1.callers)` option names."""
    from capsule.common.v1 import options_pb2
    from google.api import annotations_pb2

    options = method.GetOptions()
    callers: set[str] = set(PUBLIC_CALLERS) if options.HasExtension(annotations_pb2.http) else set()
    if options.HasExtension(options_pb2.callers):
        workloads = options.Extensions[options_pb2.callers].workloads
        if not all(w and "/" not in w for w in workloads):
            raise OptionError(
                f"{method.full_name} (capsule.common.v1.callers): {list(workloads)} are not workload names"
            )
        callers.update(workloads)
    return frozenset(callers)


def needs_token(method: MethodDescriptor) -> bool:
    """Whether `method` is public (it has an HTTP rule) and refuses callers without an access
    token: every public method but those declaring `(capsule.common.v1.anonymous)`."""
    from google.api import annotations_pb2

    return method.GetOptions().HasExtension(annotations_pb2.http) and not method_policy(method).anonymous


@functools.cache
def allowed_callers() -> Mapping[str, frozenset[str]]:
    """gRPC path → the workloads that may call it, for every method of the mesh's services (an
    empty set: nobody may)."""
    return MappingProxyType(
        {
            f"/{service.full_name}/{method.name}": method_callers(method)
            for service in mesh_services()
            for method in service.methods
        }
    )


def may_call(workload: str | None, path: str) -> bool:
    """Whether `workload` may call the gRPC `path` (an unknown path: no one)."""
    if workload is None:
        return False
    if path.startswith(OPEN_PREFIXES):
        return True
    return workload in allowed_callers().get(path, frozenset())


def public_to(workload: str | None, service: ServiceDescriptor) -> bool:
    """Whether reflection shows `service` to `workload`: operators see every service; others those
    with at least one method they may call."""
    if workload == OPERATOR:
        return True
    return any(may_call(workload, f"/{service.full_name}/{m.name}") for m in service.methods)
