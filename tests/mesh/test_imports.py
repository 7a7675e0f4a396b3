"""xds-protos and googleapis-common-protos both ship google/api and google/rpc modules:
everything the mesh imports must load together in one process."""

from __future__ import annotations

import importlib


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
