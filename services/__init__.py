"""The capsule-mesh services. `common` is the plumbing they share; each other package is one service."""
