"""The gateway's logs: the shared JSON format (services.common.logs), with uvicorn's loggers routed
into it."""

from __future__ import annotations

import logging

from services.common.logs import configure_logging as configure_json_logging
from services.common.logs import request_id_var

__all__ = ["configure_logging", "request_id_var"]


def configure_logging(level: str) -> None:
    configure_json_logging(level)
    # uvicorn's own loggers propagate to the root handler; its access log stays off (see __main__).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
