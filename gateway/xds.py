"""The gateway as a proxyless xDS client: gRPC's own xDS client (C-core in grpcio) instead of Envoy.

With GATEWAY_XDS_SERVER set, the gateway's channels go to `xds:///<proto package>`; grpcio then
reads the listener, routes, cluster and endpoints of that name from the mesh's control plane over
ADS and balances across the registered instances itself (envoy/controlplane/proxyless.py says
what it is served and why). This saves the Envoy hop (~150-200 µs CPU per call on the 2-core
target machine) while Envoy keeps serving grpcurl and service-to-service calls.

grpcio reads its bootstrap from GRPC_XDS_BOOTSTRAP (a file) or GRPC_XDS_BOOTSTRAP_CONFIG (the JSON
itself) when the first xds channel is created; `install_bootstrap` sets the latter, unless the
environment already provides one (a deployment with its own bootstrap wins).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import MutableMapping
from typing import Any

from mesh.credentials import MeshTLS
from mesh.pki import CA_NAME, IDENTITY_NAME

# Must equal controlplane.proxyless.NODE_CLUSTER: it tells the control plane this node is a gRPC
# client (api_listeners), not an Envoy. Kept literal: the gateway image carries no control plane.
NODE_CLUSTER = "capsule-mesh-proxyless"
BOOTSTRAP_VARIABLES = ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")


def node_id() -> str:
    """Unique per gateway process: the control plane keeps ACKs per node, and Deregister waits for
    every connected one — two gateways sharing an id would hide each other's lag."""
    return f"gateway-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def build_bootstrap(server: str, *, node: str, zone: str = "", tls: MeshTLS | None = None) -> dict[str, Any]:
    """The xDS bootstrap of one gateway process (gRFC A27's format). With `tls`, the ADS stream is
    mutual TLS from the gateway's certificate files (gRFC A65's `tls` channel credentials, which
    read them again every `refresh_interval`: a rotation needs no restart); the control plane's
    certificate must name `server`'s host (mesh/pki.py issues it with its addresses)."""
    credentials: dict[str, Any] = {"type": "insecure"}
    if tls is not None:
        identity = str(tls.directory / IDENTITY_NAME)
        credentials = {
            "type": "tls",
            "config": {
                "ca_certificate_file": str(tls.directory / CA_NAME),
                "certificate_file": identity,
                "private_key_file": identity,
                "refresh_interval": "10s",
            },
        }
    node_info: dict[str, Any] = {"id": node, "cluster": NODE_CLUSTER}
    if zone:
        node_info["locality"] = {"zone": zone}
    return {
        "xds_servers": [
            {
                "server_uri": server,
                "channel_creds": [credentials],
                # State-of-the-world xDS v3 (the only transport our control plane speaks).
                "server_features": ["xds_v3"],
            }
        ],
        "node": node_info,
    }


def install_bootstrap(
    server: str, *, zone: str = "", tls: MeshTLS | None = None, environ: MutableMapping[str, str] | None = None
) -> str | None:
    """Put the bootstrap in GRPC_XDS_BOOTSTRAP_CONFIG (before any xds channel exists); returns the
    node id, or None when the environment already names a bootstrap (left untouched)."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in BOOTSTRAP_VARIABLES):
        return None
    node = node_id()
    env["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(build_bootstrap(server, node=node, zone=zone, tls=tls))
    return node
