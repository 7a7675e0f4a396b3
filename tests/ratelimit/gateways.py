"""Extra gateway processes in front of a test mesh, each with its own limits and key prefix."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence

from launcher.process import ManagedProcess, free_port, http_ok
from launcher.stack import Stack


def spawn_gateways(
    stack: Stack, names: Sequence[str], prefix: str = "", **env: str
) -> list[tuple[str, ManagedProcess]]:
    """Start one gateway per name (in parallel), all with `env` and one shared Redis key prefix
    (a fresh one unless given); wait until each is ready. (url, process) per gateway."""
    prefix = prefix or f"{stack.cache_prefix}rl{uuid.uuid4().hex[:8]}:"
    started = []
    for name in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = stack.spawn(
            name,
            [sys.executable, "-m", "gateway"],
            env={**stack.gateway_env(), "GATEWAY_LISTEN": f"127.0.0.1:{port}", "CACHE_PREFIX": prefix, **env},
            ready=lambda url=url: http_ok(f"{url}/readyz"),
            wait=False,
        )
        started.append((url, process))
    for _, process in started:
        process.wait_ready(60.0)
    return started
