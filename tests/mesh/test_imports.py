"""Imports: xds-protos and googleapis-common-protos both ship google/api and google/rpc modules
(NOTES-mesh), and everything the mesh imports must load together in one process; production code
(envoy/, services/, gateway/, mesh/) never imports the launcher."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from launcher.bootstrap import REPO


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


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_production_code_never_imports_the_launcher() -> None:
    """The launcher runs things (development tooling); the mesh, the control plane, the services
    and the gateway must work without it (their images copy launcher/ only to generate stubs)."""
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for top in ("envoy", "services", "gateway", "mesh")
        for path in sorted((REPO / top).rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name == "launcher" or name.startswith("launcher.")
    ]
    assert offenders == []
    # The scan sees what it should: the launcher itself does import launcher modules.
    assert "launcher.bootstrap" in imported_modules(REPO / "launcher" / "stack.py")
