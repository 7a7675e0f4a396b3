"""Hostile input at the protocol level (issue 11, findings 5, 7, 8; SPEC §3, §7), through real gateways.

The session stack's gateway (default limits) for header sizes, counts and repeats; gateways of this
module's own, on the session stack, for the timeouts (short, so no test waits 10 s) and the
connection cap (small, so a test can reach it).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.settings import Settings
from launcher.stack import Stack
from tests.ratelimit.gateways import spawn_gateways

HEAD_TIMEOUT = 0.5
KEEPALIVE_TIMEOUT = 1.0
# How long a test waits for the gateway to close a connection that it must close within about a
# second: generous for a loaded machine, yet a connection never closed fails the test.
CLOSE_WAIT = 8.0
CAP = 4


def _problem(response: httpx.Response, status: int, reason: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["reason"] == reason
    return dict(body)


def _no_internals(body: dict[str, object]) -> None:
    text = str(body).lower()
    for leak in ("grpc", "metadata", "x-request-id", "x-forwarded-for"):
        assert leak not in text, body


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(url)
    assert address.hostname and address.port
    return await asyncio.open_connection(address.hostname, address.port)


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway sends until it closes the connection (fails if not within CLOSE_WAIT)."""
    try:
        async with asyncio.timeout(CLOSE_WAIT):
            return await reader.read(-1)
    except ConnectionResetError:
        return b""


def _status(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


# Finding 5 and the size half of 7: the session gateway.


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key"])
async def test_headers_over_16_kib_are_431(client: httpx.AsyncClient, header: str) -> None:
    response = await client.post("/v1/auth:signup", json={}, headers={header: "x" * 20_000})
    body = _problem(response, 431, "HEADERS_TOO_LARGE")
    _no_internals(body)
    # Many small headers count together.
    many = {f"X-Filler-{i}": "y" * 400 for i in range(45)}
    response = await client.get("/v1/usernames/somebody", headers=many)
    _problem(response, 431, "HEADERS_TOO_LARGE")


async def test_a_header_line_that_never_ends_is_refused_before_it_does(gateway_url: str) -> None:
    reader, writer = await _connect(gateway_url)
    try:
        # 20 KB of one header value and no end of line: the gateway answers without waiting for it.
        writer.write(b"GET /v1/usernames/somebody HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"z" * 20_000)
        await writer.drain()
        raw = await _read_to_close(reader)
    finally:
        writer.close()
    assert _status(raw) == 431
    assert b"HEADERS_TOO_LARGE" in raw


async def test_more_than_100_headers_are_431(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/usernames/somebody", headers={f"X-H{i}": "1" for i in range(101)})
    _problem(response, 431, "TOO_MANY_HEADERS")
    response = await client.get("/v1/usernames/somebody", headers={f"X-H{i}": "1" for i in range(90)})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("length", [256, 10_000])
async def test_an_over_long_idempotency_key_is_400_naming_it(client: httpx.AsyncClient, length: int) -> None:
    response = await client.get("/v1/usernames/somebody", headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 200, response.text
    response = await client.post(
        "/v1/auth:signup", json={"email": "a@example.com"}, headers={"Idempotency-Key": "k" * length}
    )
    body = _problem(response, 400, "HEADER_TOO_LONG")
    assert "Idempotency-Key" in str(body["detail"])
    assert "ratelimit-limit" not in response.headers  # refused before the rate limiter
    _no_internals(body)


@pytest.mark.parametrize("length", [4_100, 10_000])
async def test_an_over_long_authorization_is_400_naming_it(client: httpx.AsyncClient, length: int) -> None:
    response = await client.get("/v1/me", headers={"Authorization": "Bearer " + "t" * length})
    body = _problem(response, 400, "HEADER_TOO_LONG")
    assert "Authorization" in str(body["detail"])
    assert "ratelimit-limit" not in response.headers
    _no_internals(body)


# Finding 8.


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key"])
async def test_a_repeated_authorization_or_idempotency_key_is_400(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/v1/me", headers=[(header, "Bearer first"), (header, "Bearer second")])
    body = _problem(response, 400, "DUPLICATE_HEADER")
    assert header in str(body["detail"])
    # Before rate limiting (which marks every answer it let through) and before any upstream call.
    assert "ratelimit-limit" not in response.headers
    # One is fine: the same call gets as far as the token check.
    response = await client.get("/v1/me", headers={"Authorization": "Bearer first"})
    assert response.status_code == 401
    assert "ratelimit-limit" in response.headers


# The timeouts and the cap of finding 7: gateways of this module's own.


@pytest.fixture(scope="module")
def quick_gateway(stack: Stack) -> Iterator[str]:
    """A gateway whose request-head and keep-alive timeouts are short."""
    [(url, process)] = spawn_gateways(
        stack,
        ["gateway-quick-timeouts"],
        GATEWAY_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
        GATEWAY_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE_TIMEOUT),
    )
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def capped_gateway(stack: Stack) -> Iterator[str]:
    """A gateway holding at most CAP connections (timeouts long enough not to interfere)."""
    [(url, process)] = spawn_gateways(
        stack,
        ["gateway-capped"],
        GATEWAY_MAX_CONNECTIONS=str(CAP),
        GATEWAY_HEADER_TIMEOUT_SECONDS="60",
        GATEWAY_KEEPALIVE_TIMEOUT_SECONDS="60",
    )
    try:
        yield url
    finally:
        process.stop()


async def test_a_connection_that_sends_nothing_is_closed(quick_gateway: str) -> None:
    reader, writer = await _connect(quick_gateway)
    try:
        assert await _read_to_close(reader) == b""
    finally:
        writer.close()


async def test_a_head_sent_slowly_is_cut_off_at_the_deadline(quick_gateway: str) -> None:
    reader, writer = await _connect(quick_gateway)

    async def drip() -> None:
        # A byte every 100 ms keeps the connection busy but the head never ends: the deadline
        # counts from the head's start, not from the last byte.
        writer.write(b"GET /v1/usernames/somebody HTTP/1.1\r\nHost: gateway\r\nX-Drip: ")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        raw = await _read_to_close(reader)
    finally:
        dripping.cancel()
        writer.close()
    if raw:  # the 408 normally arrives; a reset after it may swallow it, the close is what counts
        assert _status(raw) == 408
        assert b"REQUEST_TIMEOUT" in raw


async def test_an_idle_keep_alive_connection_is_closed(quick_gateway: str) -> None:
    reader, writer = await _connect(quick_gateway)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_WAIT)
        assert _status(head) == 200
        assert b"connection: close" not in head.lower()  # kept alive, then closed for idleness
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        answered = time.monotonic()
        assert await _read_to_close(reader) == b""
        # Closed after this gateway's keep-alive timeout, not uvicorn's default of 5 s.
        assert time.monotonic() - answered < KEEPALIVE_TIMEOUT + 2.5
    finally:
        writer.close()


async def _metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def _until_connections(http: httpx.AsyncClient, count: int) -> None:
    """Polls the gauge (over `http`'s one kept-alive connection) until it says `count`."""
    deadline = time.monotonic() + CLOSE_WAIT
    while (current := await _metric(http, "gateway_http_connections")) != count:
        assert time.monotonic() < deadline, f"gateway_http_connections stays {current}, not {count}"


async def test_connections_past_the_cap_are_refused_and_counted(capped_gateway: str) -> None:
    held: list[asyncio.StreamWriter] = []
    async with httpx.AsyncClient(base_url=capped_gateway, timeout=5.0) as http:
        try:
            assert await _metric(http, "gateway_http_connections_max") == CAP
            await _until_connections(http, 1)  # this client's own
            # Silent connections (no request head) are held up to the cap.
            for _ in range(CAP - 1):
                held.append((await _connect(capped_gateway))[1])
            await _until_connections(http, CAP)
            # One more is answered 503 and closed at once, before it sends anything.
            reader, writer = await _connect(capped_gateway)
            held.append(writer)
            raw = await _read_to_close(reader)
            assert _status(raw) == 503
            assert b"TOO_MANY_CONNECTIONS" in raw
            assert (await http.get("/healthz")).status_code == 200  # those held are still served
            # Once the silent ones go, new connections are served again.
            for writer in held:
                writer.close()
            await _until_connections(http, 1)
            async with httpx.AsyncClient(base_url=capped_gateway, timeout=5.0) as other:
                assert (await other.get("/healthz")).status_code == 200
        finally:
            for writer in held:
                writer.close()


def test_protocol_limit_settings() -> None:
    settings = Settings.from_env(
        {
            "GATEWAY_MAX_CONNECTIONS": "50",
            "GATEWAY_MAX_HEADER_BYTES": "8192",
            "GATEWAY_MAX_HEADERS": "20",
            "GATEWAY_HEADER_TIMEOUT_SECONDS": "2.5",
            "GATEWAY_KEEPALIVE_TIMEOUT_SECONDS": "0.5",
        }
    )
    assert (settings.max_connections, settings.max_header_bytes, settings.max_headers) == (50, 8192, 20)
    assert (settings.header_timeout_seconds, settings.keepalive_timeout_seconds) == (2.5, 0.5)
    defaults = Settings.from_env({})
    assert (defaults.max_connections, defaults.max_header_bytes, defaults.max_headers) == (13000, 16384, 100)
    assert (defaults.header_timeout_seconds, defaults.keepalive_timeout_seconds) == (10.0, 5.0)
    for name, raw in [("GATEWAY_MAX_CONNECTIONS", "1.5"), ("GATEWAY_HEADER_TIMEOUT_SECONDS", "0")]:
        with pytest.raises(SystemExit):
            Settings.from_env({name: raw})
