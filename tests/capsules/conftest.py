"""The capsules tests' own mesh: the whole topology like the shared `stack`, with one test-only
setting — CAPSULE_MIN_UNLOCK_LEAD_SECONDS=1 — so capsules can unlock a couple of seconds after
they are sent and tests see them turn ready (the shared stack keeps SPEC §6's 1 minute).

    capsule_stack   launcher.stack.Stack, package-scoped
    api             httpx.AsyncClient on its gateway
    capsules_db     asyncpg connection to its capsules database (function-scoped)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
from tests.conftest import start_test_stack

MIN_LEAD_SECONDS = 1


@pytest.fixture(scope="package")
def capsule_stack(infra: infra_mod.Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    mesh = start_test_stack(
        infra,
        jwt_keys,
        service_env={"CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(MIN_LEAD_SECONDS)},
    )
    try:
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="package")
async def api(capsule_stack: Stack) -> AsyncIterator[Any]:
    import httpx

    async with httpx.AsyncClient(base_url=capsule_stack.gateway_url, timeout=30.0) as http:
        yield http


@pytest.fixture
async def capsules_db(capsule_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    dsn = capsule_stack.database_urls["capsules"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
