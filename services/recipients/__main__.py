"""Entry point: `python -m services.recipients [serve|migrate]`."""

from pathlib import Path

from services.common import cli
from services.recipients.app import serve

if __name__ == "__main__":
    cli.run("recipients", serve, Path(__file__).parent / "migrations")
