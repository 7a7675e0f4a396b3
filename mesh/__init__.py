"""What the mesh is, for every part that needs to know: the services of the topology (topology.py),
the Envoy resources built from it (envoy_config.py), and the drain and lease timings with the
relations between them (timing.py). Imported by the control plane, the services, the launcher, the
bench and the tests; it imports none of the control plane, the launcher, the bench or the tests."""
