"""Development launcher: sets up a machine, runs the whole mesh locally, runs the tests."""
