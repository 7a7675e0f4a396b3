"""The command line every service shares: `python -m services.<name> [serve|migrate]`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from services.common.logs import configure_logging
from services.common.migrations import upgrade
from services.common.settings import DatabaseSettings


def run(
    name: str,
    serve: Callable[[], Coroutine[Any, Any, None]],
    migrations_dir: Path,
    argv: list[str] | None = None,
) -> None:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    configure_logging("INFO")
    if command == "migrate":
        upgrade(migrations_dir, DatabaseSettings.from_env(default_database=name).url)
    elif command == "serve":
        uvloop.run(serve())
    else:
        raise SystemExit(f"usage: python -m services.{name} [serve|migrate]")
