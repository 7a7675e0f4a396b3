"""The mesh's public API catalog, for server reflection.

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
