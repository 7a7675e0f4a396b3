"""Sender profiles on inbox pages come from the capsules service's own copies (services.common.people
.CachedDirectory), not from a call to auth per page — and an update is on the very next page.

Through the gateway, on the capsules tests' mesh (two instances of every service): the recipient
reads enough pages for both capsules instances to hold a copy of the sender's profile; the sender
renames themself; every page read right after shows the new name, from either instance, and so
does the recipient's list of connections (recipients keeps copies the same way).
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import httpx

from launcher.stack import Stack
from tests.capsules.helpers import bearer, pair, send, uid

READS = 12  # per round: Envoy's least-request balancing spreads them over both instances


def get_users_calls(stack: Stack) -> int:
    """GetUsers calls answered by the auth instances so far (their Prometheus counters)."""
    total = 0
    for instance in stack.instances["auth"]:
        with urllib.request.urlopen(f"http://{instance.admin_address}/metrics", timeout=5) as response:
            text = response.read().decode()
        total += sum(
            int(float(v)) for v in re.findall(r'grpc_server_handled_total\{[^}]*method="GetUsers"[^}]*\} (\S+)', text)
        )
    return total


async def sender_names(api: httpx.AsyncClient, reader: dict[str, Any], sender: dict[str, Any]) -> list[str]:
    names = []
    for _ in range(READS):
        page = await api.get("/v1/capsules", params={"box": "inbox"}, headers=bearer(reader))
        assert page.status_code == 200, page.text
        names += [c["sender"]["firstName"] for c in page.json()["capsules"] if c.get("senderId") == uid(sender)]
    return names


async def connection_names(api: httpx.AsyncClient, reader: dict[str, Any], other: dict[str, Any]) -> list[str]:
    names = []
    for _ in range(READS):
        page = await api.get("/v1/connections", headers=bearer(reader))
        assert page.status_code == 200, page.text
        names += [c["user"]["firstName"] for c in page.json()["connections"] if c["user"]["id"] == uid(other)]
    return names


async def test_a_renamed_sender_shows_on_the_next_inbox_page_from_every_instance(
    api: httpx.AsyncClient, capsule_stack: Stack
) -> None:
    a, b, recipient = await pair(api)
    assert (await send(api, a, recipient)).status_code == 200

    before = await sender_names(api, b, a)
    assert len(before) == READS and len(set(before)) == 1
    calls = get_users_calls(capsule_stack)
    assert await sender_names(api, b, a) == before
    assert get_users_calls(capsule_stack) == calls, "pages must be served from the copies, not by asking auth"

    for round_ in range(3):
        renamed = f"Renamed{round_}"
        patched = await api.patch("/v1/me", json={"firstName": renamed}, headers=bearer(a))
        assert patched.status_code == 200, patched.text
        assert await sender_names(api, b, a) == [renamed] * READS
        assert await connection_names(api, b, a) == [renamed] * READS
