"""xds-protos and googleapis-common-protos both ship google/api and google/rpc modules: everything
the mesh imports must load together in one process. And the layering of imports: production code
never imports the launcher; mesh/ imports none of its users."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path


def test_googleapis_xds_protos_and_the_control_plane_import_together() -> None:
    for name in (
        "google.rpc.status_pb2",
        "google.api.annotations_pb2",
        "envoy.service.discovery.v3.ads_pb2_grpc",
        "controlplane",
        "controlplane.app",
        "capsule.mesh.v1.registry_pb2_grpc",
        "capsule.auth.v1.auth_pb2",
    ):
        importlib.import_module(name)
    from google.api import annotations_pb2
    from google.rpc import status_pb2

    assert status_pb2.Status(code=3).code == 3
    assert annotations_pb2.http.name == "http"


def imported_top_levels(folder: str) -> dict[str, set[str]]:
    """File → the top-level packages its Python code imports (at any depth: lazy imports too)."""
    repo = Path(__file__).resolve().parents[2]
    found: dict[str, set[str]] = {}
    for path in sorted((repo / folder).rglob("*.py")):
        tops: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
        found[str(path.relative_to(repo))] = tops
    return found


def test_production_code_never_imports_the_development_launcher() -> None:
    for folder in ("envoy", "services", "gateway", "mesh"):
        for path, tops in imported_top_levels(folder).items():
            assert "launcher" not in tops, path


def test_the_mesh_package_imports_none_of_its_users() -> None:
    for path, tops in imported_top_levels("mesh").items():
        assert not tops & {"launcher", "services", "gateway", "controlplane", "bench", "tests"}, path
