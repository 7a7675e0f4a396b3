"""What the capsules service keeps in process memory — sender profiles (services.common.people
.CachedDirectory) and unfiltered inbox/outbox pages (services.capsules.pages) — is served instead
of a call to auth or a query, and never after a change: the very next read shows it.

Through the gateway, on the capsules tests' mesh (two instances of every service): a reader reads
enough pages for both capsules instances to hold copies; then a write (a rename, a new capsule, an
edit, a delete, an open); every page read right after shows it, from either instance.
"""

from __future__ import annotations

from typing import Any

import httpx

from launcher.stack import Stack
from tests.capsules.helpers import at, bearer, eventually, pair, send, uid
from tests.metrics import summed

READS = 12  # per round: Envoy's least-request balancing spreads them over both instances


def get_users_calls(stack: Stack) -> float:
    """GetUsers calls answered by the auth instances so far."""
    return summed(stack, "auth", r'grpc_server_handled_total\{[^}]*method="GetUsers"[^}]*\} (\S+)')


def kept_pages_served(stack: Stack) -> float:
    return summed(stack, "capsules", r'cache_requests_total\{cache="capsule_page",result="hit"\} (\S+)')


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


async def own_names(api: httpx.AsyncClient, reader: dict[str, Any]) -> list[str]:
    names = []
    for _ in range(READS):
        me = await api.get("/v1/me", headers=bearer(reader))
        assert me.status_code == 200, me.text
        names.append(me.json()["firstName"])
    return names


async def test_a_renamed_sender_shows_on_the_next_inbox_page_from_every_instance(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    a, b, recipient = await pair(api)
    assert (await send(api, a, recipient)).status_code == 200

    before = await sender_names(api, b, a)
    assert len(before) == READS and len(set(before)) == 1
    calls = get_users_calls(stack)
    assert await sender_names(api, b, a) == before
    assert get_users_calls(stack) == calls, "pages must be served from the copies, not by asking auth"

    for round_ in range(3):
        renamed = f"Renamed{round_}"
        patched = await api.patch("/v1/me", json={"firstName": renamed}, headers=bearer(a))
        assert patched.status_code == 200, patched.text
        assert await sender_names(api, b, a) == [renamed] * READS
        assert await connection_names(api, b, a) == [renamed] * READS
        served = summed(stack, "auth", r'cache_requests_total\{cache="user_copy",result="hit"\} (\S+)')
        assert await own_names(api, a) == [renamed] * READS  # auth keeps copies too...
        hits = summed(stack, "auth", r'cache_requests_total\{cache="user_copy",result="hit"\} (\S+)')
        assert hits >= served + READS - 2  # ...and serves GetMe from them


async def box(api: httpx.AsyncClient, reader: dict[str, Any], name: str) -> list[list[tuple[str, str, str]]]:
    """READS reads of a box's first page: (id, title, status) per capsule, per read."""
    pages = []
    for _ in range(READS):
        page = await api.get("/v1/capsules", params={"box": name}, headers=bearer(reader))
        assert page.status_code == 200, page.text
        pages.append([(c["id"], c["title"], c["status"]) for c in page.json()["capsules"]])
    return pages


async def test_kept_pages_are_served_and_every_write_shows_on_the_next_read(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    a, b, recipient = await pair(api)
    # Sealed through the writes below even on a loaded machine (~60 reads), ready soon after.
    first = (await send(api, a, recipient, title="first", unlocksAt=at(10))).json()
    inbox = await box(api, b, "inbox")
    assert inbox == [[(first["id"], "first", "CAPSULE_STATUS_SEALED")]] * READS
    served = kept_pages_served(stack)
    assert await box(api, b, "inbox") == inbox
    assert kept_pages_served(stack) >= served + READS - 2, "pages must come from the kept copies"
    assert await box(api, a, "outbox") == inbox

    second = (await send(api, a, recipient, title="second")).json()
    both = [(first["id"], "first", "CAPSULE_STATUS_SEALED"), (second["id"], "second", "CAPSULE_STATUS_SEALED")]
    assert await box(api, b, "inbox") == [both] * READS
    assert await box(api, a, "outbox") == [both] * READS

    edited = await api.patch(f"/v1/capsules/{second['id']}", json={"title": "edited"}, headers=bearer(a))
    assert edited.status_code == 200, edited.text
    both[1] = (second["id"], "edited", "CAPSULE_STATUS_SEALED")
    assert await box(api, b, "inbox") == [both] * READS
    assert (await api.delete(f"/v1/capsules/{second['id']}", headers=bearer(a))).status_code == 200
    assert await box(api, a, "outbox") == [both[:1]] * READS
    assert await box(api, b, "inbox") == [both[:1]] * READS

    # Status comes from the clock at every read, kept page or not: the first one turns ready...
    ready = await eventually(lambda: _first_status(api, b, "CAPSULE_STATUS_READY"), within=25.0)
    assert ready
    # ...and an open shows on both sides at once.
    assert (await api.post(f"/v1/capsules/{first['id']}:open", headers=bearer(b))).status_code == 200
    opened = [[(first["id"], "first", "CAPSULE_STATUS_OPENED")]] * READS
    assert await box(api, b, "inbox") == opened
    assert await box(api, a, "outbox") == opened


async def _first_status(api: httpx.AsyncClient, reader: dict[str, Any], status: str) -> bool | None:
    pages = await box(api, reader, "inbox")
    return True if all(page[0][2] == status for page in pages) else None
