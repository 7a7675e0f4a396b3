"""Entry point: `python -m services.auth [serve|migrate]`."""

from pathlib import Path

from services.auth.app import serve
from services.common import cli

if __name__ == "__main__":
    cli.run("auth", serve, Path(__file__).parent / "migrations")
