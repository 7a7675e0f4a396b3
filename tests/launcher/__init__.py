"""Tests of the launcher: Envoy config, infra detection, the stack, compose/Dockerfiles."""
