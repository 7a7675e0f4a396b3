"""mesh/topology.py agrees with the code: modules exist, proto names and route prefixes match
the generated descriptors, and names/prefixes/databases are unique."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from mesh.topology import SERVICES, ServiceSpec, by_name, gateway_proto_modules


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_service_entry_matches_the_code(spec: ServiceSpec) -> None:
    assert importlib.util.find_spec(f"{spec.module}.__main__") is not None
    modules = [importlib.import_module(name) for name in spec.proto_modules]
    package, _, short = spec.proto_service.rpartition(".")
    assert short in modules[0].DESCRIPTOR.services_by_name  # the health-checked service comes first
    assert {module.DESCRIPTOR.package for module in modules} == {package}
    assert f"/{package}." in spec.route_prefixes
    assert spec.instances >= 2


def test_names_prefixes_and_databases_are_unique() -> None:
    prefixes = [p for s in SERVICES for p in s.route_prefixes]
    assert len(prefixes) == len(set(prefixes))
    assert len({s.name for s in SERVICES}) == len({s.database for s in SERVICES}) == len(SERVICES)
    assert all(p.startswith("/") and p.endswith(".") for p in prefixes)


def test_reflection_routes_to_exactly_one_service() -> None:
    assert sum("/grpc.reflection." in s.route_prefixes for s in SERVICES) == 1


def test_lookups() -> None:
    assert by_name("auth").module == "services.auth"
    with pytest.raises(KeyError):
        by_name("nope")
    assert gateway_proto_modules() == ",".join(m for s in SERVICES for m in s.proto_modules)
