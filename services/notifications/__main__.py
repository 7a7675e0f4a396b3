"""Entry point: `python -m services.notifications [serve|migrate]`."""

from pathlib import Path

from services.common import cli

if __name__ == "__main__":
    cli.run("notifications", Path(__file__).parent / "migrations")
