"""Plumbing shared by every service: settings, server bootstrap, database, cache, tokens, errors,
pagination, telemetry. Nothing here knows about a particular service's rules."""
