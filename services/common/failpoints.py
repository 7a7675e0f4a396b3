"""Named points where a test can make this process die on the spot (FAILPOINTS=name,name…): what a
kill -9 or a power cut at that instant does, for the sagas that must survive one (the invite claim,
services/capsules/invites.py). Unset in production, where failpoint() is one set lookup."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# The exit code of a process a failpoint killed (sysexits' EX_SOFTWARE).
EXIT_CODE = 70

_ARMED = frozenset(name.strip() for name in os.environ.get("FAILPOINTS", "").split(",") if name.strip())


def failpoint(name: str) -> None:
    """Die here, without any clean-up, if FAILPOINTS names `name`."""
    if name in _ARMED:
        log.critical("failpoint reached: exiting", extra={"fields": {"failpoint": name}})
        logging.shutdown()
        os._exit(EXIT_CODE)
