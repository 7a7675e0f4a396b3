"""What the mesh is, for every part that needs to know: the services of the topology (topology.py),
the Envoy resources built from it (envoy_config.py), the drain and lease timings with the relations
between them (timing.py), and what the protos declare about methods (catalog.py: reflection's
catalog, retries, route policies). Imported by the control plane, the services, the gateway, the
launcher, the bench and the tests; it imports none of them."""
