"""`python -m controlplane`: the xDS control plane (settings from the environment, see app.py)."""

from __future__ import annotations

import os

import uvloop

from controlplane.app import serve
from services.common.logs import configure_logging


def main() -> None:
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    uvloop.run(serve())


if __name__ == "__main__":
    main()
