"""What the mesh is, for every part that needs to know: the services of the topology (topology.py)
and the Envoy resources built from it (envoy_config.py). Imported by the control plane, the
launcher, the bench and the tests; it imports neither of them."""
