"""The mesh's API catalog: for server reflection, and which methods are safe to retry.

Envoy routes server reflection to one service's instances, yet `grpcurl list` through Envoy must
show every service of the mesh (and `describe` any of them), each of which Envoy then reaches by
its name. So every instance's reflection describes the whole catalog: the services of every
generated `capsule.*` proto module, except the mesh's own control-plane API (`capsule.mesh.*`,
spoken only between instances and the control plane, never routed by Envoy).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

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


@functools.cache
def retryable_methods() -> frozenset[str]:
    """gRPC paths (`/package.Service/Method`) of every method its proto declares without side
    effects or idempotent (`option idempotency_level = …`): Envoy may retry those after they
    reached a server; any other call only when it never got there."""
    from google.protobuf import descriptor_pool
    from google.protobuf.descriptor_pb2 import MethodOptions

    safe = (MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT)
    pool = descriptor_pool.Default()
    return frozenset(
        f"/{name}/{method.name}"
        for name in mesh_service_names()
        for method in pool.FindServiceByName(name).methods
        if method.GetOptions().idempotency_level in safe
    )
