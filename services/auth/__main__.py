"""Entry point: `python -m services.auth [serve|migrate]`."""

from pathlib import Path

from services.common import cli

if __name__ == "__main__":
    cli.run("auth", Path(__file__).parent / "migrations")
