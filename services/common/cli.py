"""The command line every service shares: `python -m services.<name> [serve|migrate]`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import uvloop

from services.common.logs import configure_logging
from services.common.migrations import upgrade
from services.common.settings import DatabaseSettings


def run(name: str, migrations_dir: Path, argv: list[str] | None = None) -> None:
    """`serve` runs `services.<name>.app.serve()`; `migrate` imports only what migrating needs (a
    migration runs before every start of a stack: the app's imports would double its cost)."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    configure_logging("INFO")
    if command == "migrate":
        upgrade(migrations_dir, DatabaseSettings.from_env(default_database=name).url)
    elif command == "serve":
        uvloop.run(importlib.import_module(f"services.{name}.app").serve())
    else:
        raise SystemExit(f"usage: python -m services.{name} [serve|migrate]")
