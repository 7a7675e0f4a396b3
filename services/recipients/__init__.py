"""The recipients service (SPEC §5): connection requests, connections, blocks and recipients."""
