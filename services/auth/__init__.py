"""The auth service (SPEC §4): accounts, sessions, profiles and user search."""
