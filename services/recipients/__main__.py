"""Entry point: `python -m services.recipients [serve|migrate]`."""

from pathlib import Path

from services.common import cli

if __name__ == "__main__":
    cli.run("recipients", Path(__file__).parent / "migrations")
