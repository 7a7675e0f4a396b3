"""Push delivery (SPEC §14).

- The adapters, without the mesh, against a local fake of each provider's HTTP API on 127.0.0.1
  (hypercorn serving an ASGI app; HTTP/2 for APNs, which the fake checks): the request each sends
  and how each answer maps to an outcome.
- The sender job against a real Postgres (a scratch notifications database migrated to head):
  delivered, retried with back-off or Retry-After then delivered once, given up after the last
  attempt, and a dead token dropped with its deliveries.
- End to end on the real mesh (log provider): an event becomes one notification and one delivered
  push per device of its user; a token that moved to someone else gets nothing of its old owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

from launcher.stack import Stack
from services.common import events
from services.common.db import Database
from services.common.settings import DatabaseSettings
from services.notifications.push import config
from services.notifications.push.apns import ApnsProvider, ProviderToken
from services.notifications.push.base import Device, Message, Outcome, Result
from services.notifications.push.fcm import FcmProvider, TokenFile
from services.notifications.push.sender import Sender, backoff_seconds
from tests.capsules.helpers import bearer, eventually, new_user, uid
from tests.notifications.helpers import drained, envelope, stream_of
from tests.notifications.test_devices import apns_token, at_token, fcm_token
from tests.query_plans import ADMIN_DSN, scratch_database

MESSAGE = Message(title="A letter is ready", body="Open it now.", data={"kind": "capsule_ready"}, collapse_id="n1")

# --- a local fake provider --------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    http_version: str


@dataclass
class Fake:
    """An HTTP server on 127.0.0.1 that records each request and answers from a script (status,
    headers, JSON body), then 200 once the script is used up."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    script: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    # Or an answer chosen per request (by the token it carries, say); None falls back to the script.
    choose: Callable[[Seen], tuple[int, dict[str, str], Any] | None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            event = await receive()
            raw += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], headers, json.loads(raw or b"null"), scope["http_version"])
        self.seen.append(seen)
        chosen = self.choose(seen) if self.choose else None
        if chosen is None:
            chosen = self.script.pop(0) if self.script else (200, {}, {"name": "projects/p/messages/1"})
        status, extra, body = chosen
        payload = json.dumps(body).encode() if body is not None else b""
        out = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in extra.items())]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running(fake: Fake) -> AsyncIterator[Fake]:
    port = free_port()
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(fake, cfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    fake.url = f"http://127.0.0.1:{port}"

    async def up() -> bool | None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return None
        writer.close()
        return True

    await eventually(up, within=10.0, every=0.05)
    try:
        yield fake
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    async with running(Fake()) as server:
        yield server


@pytest.fixture
def access_token(tmp_path: Path) -> TokenFile:
    path = tmp_path / "fcm-token"
    path.write_text("ya29.test-access-token\n")
    return TokenFile(str(path))


@pytest.fixture
def apns_key(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "AuthKey.p8"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path, key.public_key()


def fcm_of(fake: Fake, token: TokenFile) -> FcmProvider:
    return FcmProvider(project="capsule-test", access_token=token, endpoint=fake.url)


def apns_of(fake: Fake, key: Path) -> ApnsProvider:
    return ApnsProvider(
        topic="app.capsule.ios",
        token=ProviderToken.from_file(str(key), key_id="KEY123", team_id="TEAM456"),
        endpoint=fake.url,
    )


# --- FCM ---------------------------------------------------------------------------------------------


async def test_fcm_sends_the_v1_request_with_a_bearer_token(fake: Fake, access_token: TokenFile) -> None:
    provider = fcm_of(fake, access_token)
    token = fcm_token()
    try:
        assert await provider.send(Device(token, "fcm"), MESSAGE) == Outcome.delivered()
    finally:
        await provider.aclose()
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("POST", "/v1/projects/capsule-test/messages:send")
    assert seen.headers["authorization"] == "Bearer ya29.test-access-token"
    assert seen.headers["content-type"] == "application/json"
    message = seen.body["message"]
    assert message["token"] == token
    assert message["notification"] == {"title": MESSAGE.title, "body": MESSAGE.body}
    assert message["data"] == {"kind": "capsule_ready"}
    assert message["android"]["collapse_key"] == "n1"


def fcm_error(code: int, status: str, error_code: str = "", violations: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code})
    if violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": f, "description": "bad"} for f in violations],
            }
        )
    return {"error": {"code": code, "message": "m", "status": status, "details": details}}


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (200, {}, {"name": "projects/p/messages/1"}, Outcome.delivered()),
        (404, {}, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), Outcome.dead("UNREGISTERED")),
        (403, {}, fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), Outcome.dead("SENDER_ID_MISMATCH")),
        (
            400,
            {},
            fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", ["message.token"]),
            Outcome.dead("INVALID_ARGUMENT"),
        ),
        # An invalid payload is not the token's fault: not dead.
        (
            400,
            {},
            fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", ["message.data"]),
            Outcome.retry(None, "INVALID_ARGUMENT"),
        ),
        (
            429,
            {"retry-after": "17"},
            fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
            Outcome.retry(17, "QUOTA_EXCEEDED"),
        ),
        (500, {}, fcm_error(500, "INTERNAL", "INTERNAL"), Outcome.retry(None, "INTERNAL")),
        (503, {"retry-after": "3"}, None, Outcome.retry(3, "503")),
    ],
)
async def test_fcm_answers_map_to_outcomes(
    fake: Fake, access_token: TokenFile, status: int, headers: dict[str, str], body: Any, expected: Outcome
) -> None:
    fake.script.append((status, headers, body))
    provider = fcm_of(fake, access_token)
    try:
        assert await provider.send(Device(fcm_token(), "fcm"), MESSAGE) == expected
    finally:
        await provider.aclose()


async def test_fcm_reads_a_refreshed_access_token(fake: Fake, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first")
    provider = fcm_of(fake, TokenFile(str(path)))
    try:
        await provider.send(Device(fcm_token(), "fcm"), MESSAGE)
        path.write_text("second")
        import os

        os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
        await provider.send(Device(fcm_token(), "fcm"), MESSAGE)
    finally:
        await provider.aclose()
    assert [s.headers["authorization"] for s in fake.seen] == ["Bearer first", "Bearer second"]


async def test_an_unreachable_provider_is_retried() -> None:
    provider = FcmProvider(project="p", access_token=TokenFile("/dev/null"), endpoint=f"http://127.0.0.1:{free_port()}")
    try:
        outcome = await provider.send(Device(fcm_token(), "fcm"), MESSAGE)
    finally:
        await provider.aclose()
    assert outcome.result is Result.RETRY


# --- APNs --------------------------------------------------------------------------------------------


async def test_apns_sends_over_http2_with_a_provider_token(
    fake: Fake, apns_key: tuple[Path, ec.EllipticCurvePublicKey]
) -> None:
    key_path, public = apns_key
    provider = apns_of(fake, key_path)
    token = apns_token()
    try:
        assert await provider.send(Device(token, "apns"), MESSAGE) == Outcome.delivered()
        assert await provider.send(Device(token, "apns"), MESSAGE) == Outcome.delivered()
    finally:
        await provider.aclose()
    first, second = fake.seen
    assert first.http_version == "2"
    assert (first.method, first.path) == ("POST", f"/3/device/{token}")
    assert first.headers["apns-topic"] == "app.capsule.ios"
    assert first.headers["apns-push-type"] == "alert"
    assert first.headers["apns-collapse-id"] == "n1"
    scheme, _, provider_token = first.headers["authorization"].partition(" ")
    assert scheme == "bearer"
    header = jwt.get_unverified_header(provider_token)
    assert (header["alg"], header["kid"]) == ("ES256", "KEY123")
    claims = jwt.decode(provider_token, public, algorithms=["ES256"])
    assert claims["iss"] == "TEAM456" and abs(claims["iat"] - datetime.now(UTC).timestamp()) < 60
    # The provider token is reused, not made per push.
    assert second.headers["authorization"] == first.headers["authorization"]
    assert first.body == {"aps": {"alert": {"title": MESSAGE.title, "body": MESSAGE.body}}, "kind": "capsule_ready"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (200, {}, None, Outcome.delivered()),
        (410, {}, {"reason": "Unregistered", "timestamp": 1}, Outcome.dead("Unregistered")),
        (400, {}, {"reason": "BadDeviceToken"}, Outcome.dead("BadDeviceToken")),
        (400, {}, {"reason": "DeviceTokenNotForTopic"}, Outcome.dead("DeviceTokenNotForTopic")),
        (400, {}, {"reason": "PayloadTooLarge"}, Outcome.retry(None, "PayloadTooLarge")),
        (429, {"retry-after": "30"}, {"reason": "TooManyRequests"}, Outcome.retry(30, "TooManyRequests")),
        (500, {}, {"reason": "InternalServerError"}, Outcome.retry(None, "InternalServerError")),
        (503, {}, {"reason": "ServiceUnavailable"}, Outcome.retry(None, "ServiceUnavailable")),
    ],
)
async def test_apns_answers_map_to_outcomes(
    fake: Fake,
    apns_key: tuple[Path, ec.EllipticCurvePublicKey],
    status: int,
    headers: dict[str, str],
    body: Any,
    expected: Outcome,
) -> None:
    fake.script.append((status, headers, body))
    provider = apns_of(fake, apns_key[0])
    try:
        assert await provider.send(Device(apns_token(), "apns"), MESSAGE) == expected
    finally:
        await provider.aclose()


async def test_an_expired_provider_token_is_made_again(
    fake: Fake, apns_key: tuple[Path, ec.EllipticCurvePublicKey]
) -> None:
    fake.script.append((403, {}, {"reason": "ExpiredProviderToken"}))
    now = [1_000_000.0]
    provider = apns_of(fake, apns_key[0])
    provider.token.clock = lambda: now[0]
    try:
        assert (await provider.send(Device(apns_token(), "apns"), MESSAGE)).result is Result.RETRY
        now[0] += 1
        assert await provider.send(Device(apns_token(), "apns"), MESSAGE) == Outcome.delivered()
    finally:
        await provider.aclose()
    assert fake.seen[0].headers["authorization"] != fake.seen[1].headers["authorization"]


# --- configuration -----------------------------------------------------------------------------------


def test_providers_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, apns_key: tuple[Path, ec.EllipticCurvePublicKey]
) -> None:
    assert {p: v.name for p, v in config.providers_from_env().items()} == {"fcm": "log", "apns": "log"}
    (tmp_path / "t").write_text("x")
    monkeypatch.setenv("PUSH_PROVIDER", "fcm,apns")
    monkeypatch.setenv("FCM_PROJECT_ID", "p")
    monkeypatch.setenv("FCM_ACCESS_TOKEN_FILE", str(tmp_path / "t"))
    monkeypatch.setenv("FCM_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("APNS_TOPIC", "app")
    monkeypatch.setenv("APNS_KEY_FILE", str(apns_key[0]))
    monkeypatch.setenv("APNS_KEY_ID", "K")
    monkeypatch.setenv("APNS_TEAM_ID", "T")
    chosen = config.providers_from_env()
    assert {p: v.name for p, v in chosen.items()} == {"fcm": "fcm", "apns": "apns"}
    assert isinstance(chosen["fcm"], FcmProvider) and chosen["fcm"].url.startswith("http://127.0.0.1:1/")
    monkeypatch.setenv("PUSH_PROVIDER_APNS", "log")
    assert config.providers_from_env()["apns"].name == "log"
    monkeypatch.delenv("APNS_TOPIC")
    monkeypatch.setenv("PUSH_PROVIDER_APNS", "apns")
    with pytest.raises(ValueError, match="APNS_TOPIC"):
        config.providers_from_env()
    monkeypatch.setenv("PUSH_PROVIDER", "webpush")
    monkeypatch.delenv("PUSH_PROVIDER_APNS")
    with pytest.raises(ValueError, match="unknown"):
        config.providers_from_env()


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    assert [backoff_seconds(n, base=2, cap=60, rand=lambda: 1.0) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert [backoff_seconds(n, base=2, cap=60, rand=lambda: 0.0) for n in range(1, 4)] == [1, 2, 4]


# --- the sender job, on a real Postgres ----------------------------------------------------------------


class Scripted:
    """A provider answering from a script per token (then delivered), recording each send."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script: dict[str, list[Outcome]] = {}
        self.sent: list[tuple[str, Message]] = []

    async def send(self, device: Device, message: Message) -> Outcome:
        self.sent.append((device.token, message))
        queue = self.script.get(device.token) or []
        return queue.pop(0) if queue else Outcome.delivered()

    async def aclose(self) -> None:
        return None


@dataclass
class Queue:
    conn: asyncpg.Connection
    db: Database

    async def device(self, user: uuid.UUID, token: str, platform: str) -> None:
        await self.conn.execute(
            "INSERT INTO devices (token, user_id, platform, seq) VALUES ($1, $2, $3, $4)",
            token,
            user,
            platform,
            uuid.uuid4(),
        )

    async def notify(self, user: uuid.UUID) -> uuid.UUID:
        """A notification and its deliveries, as the consumer queues them."""
        from services.notifications import storage
        from services.notifications.push import storage as push_storage
        from services.notifications.storage import NewNotification

        row = NewNotification(
            id=uuid.uuid4(), event_id=uuid.uuid4(), user_id=user, kind="capsule_ready", capsule_id=uuid.uuid4()
        )
        async with self.db.write() as conn:
            assert await storage.insert(conn, row)
            await push_storage.queue(conn, row.id, user)
        return row.id

    async def rows(self) -> dict[str, tuple[str, int]]:
        found = await self.conn.fetch("SELECT token, state, attempts FROM push_deliveries")
        return {r["token"]: (r["state"], r["attempts"]) for r in found}


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    async with scratch_database("notifications") as conn:
        name = await conn.fetchval("SELECT current_database()")
        base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        db = Database(DatabaseSettings(url=f"{base}/{name}", pool_size=2, max_overflow=0))
        try:
            yield Queue(conn, db)
        finally:
            await db.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def test_the_sender_delivers_retries_gives_up_and_drops_dead_tokens(queue: Queue) -> None:
    fcm, apns = Scripted("fcm"), Scripted("apns")
    clock = Clock()
    clock.advance(1)  # after the rows' default next_attempt_at (now())
    sender = Sender(
        queue.db,
        {"fcm": fcm, "apns": apns},
        max_attempts=3,
        backoff_base_seconds=10,
        backoff_cap_seconds=100,
        clock=clock,
    )
    user = uuid.uuid4()
    ok, flaky, throttled, hopeless = fcm_token(), fcm_token(), fcm_token(), apns_token()
    dead = apns_token()
    for token, platform in [(ok, "fcm"), (flaky, "fcm"), (throttled, "fcm"), (hopeless, "apns"), (dead, "apns")]:
        await queue.device(user, token, platform)
    fcm.script[flaky] = [Outcome.retry(reason="INTERNAL")]
    fcm.script[throttled] = [Outcome.retry(30, "QUOTA_EXCEEDED")]
    apns.script[hopeless] = [Outcome.retry(reason="InternalServerError")] * 3
    apns.script[dead] = [Outcome.dead("Unregistered")]
    notification = await queue.notify(user)

    assert await sender.run_once() == 5
    assert await queue.rows() == {
        ok: ("delivered", 1),
        flaky: ("pending", 1),
        throttled: ("pending", 1),
        hopeless: ("pending", 1),
    }
    assert await queue.conn.fetchval("SELECT count(*) FROM devices WHERE token = $1", dead) == 0
    assert await queue.conn.fetchval("SELECT last_success_at FROM devices WHERE token = $1", ok) is not None
    due = {
        r["token"]: r["next_attempt_at"]
        for r in await queue.conn.fetch("SELECT token, next_attempt_at FROM push_deliveries WHERE state = 'pending'")
    }
    # Back-off after the first failure: 5 to 10 s (base 10, equal jitter); Retry-After exactly.
    assert timedelta(seconds=5) <= due[flaky] - clock.now <= timedelta(seconds=10)
    assert due[throttled] - clock.now == timedelta(seconds=30)

    assert await sender.run_once() == 0  # nothing due yet
    clock.advance(11)
    assert await sender.run_once() == 2  # flaky and hopeless
    clock.advance(30)
    await sender.run_once()
    clock.advance(101)
    await sender.run_once()
    assert await queue.rows() == {
        ok: ("delivered", 1),
        flaky: ("delivered", 2),
        throttled: ("delivered", 2),
        hopeless: ("given_up", 3),
    }
    clock.advance(1000)
    assert await sender.run_once() == 0
    # Each push sent once per attempt, never after it was delivered; the message names the kind.
    assert [t for t, _ in fcm.sent].count(flaky) == 2 and [t for t, _ in fcm.sent].count(ok) == 1
    message = fcm.sent[0][1]
    assert message.data["notification_id"] == str(notification) and message.data["kind"] == "capsule_ready"


async def test_a_sender_killed_mid_send_sends_again_after_its_lease(queue: Queue) -> None:
    clock = Clock()
    clock.advance(1)
    provider = Scripted("fcm")
    user, token = uuid.uuid4(), fcm_token()
    await queue.device(user, token, "fcm")
    await queue.notify(user)

    dying = Sender(queue.db, {"fcm": provider, "apns": provider}, lease_seconds=60, clock=clock)
    dying._record = _crashing  # type: ignore[method-assign,assignment]  # killed after the send, before the outcome
    with pytest.raises(Killed):
        await dying.run_once()
    assert await queue.rows() == {token: ("pending", 1)}
    survivor = Sender(queue.db, {"fcm": provider, "apns": provider}, lease_seconds=60, clock=clock)
    assert await survivor.run_once() == 0  # leased
    clock.advance(61)
    assert await survivor.run_once() == 1
    assert await queue.rows() == {token: ("delivered", 2)}


async def _crashing(*_: Any) -> None:
    raise Killed


class Killed(Exception):
    pass


async def test_two_senders_share_the_queue_without_sending_twice(queue: Queue) -> None:
    clock = Clock()
    clock.advance(1)
    provider = Scripted("fcm")
    user = uuid.uuid4()
    tokens = [fcm_token() for _ in range(30)]
    for token in tokens:
        await queue.device(user, token, "fcm")
    await queue.notify(user)
    senders = [Sender(queue.db, {"fcm": provider, "apns": provider}, batch_size=7, clock=clock) for _ in range(2)]
    while sum(await asyncio.gather(*(s.run_once() for s in senders))):
        pass
    assert sorted(t for t, _ in provider.sent) == sorted(tokens)
    assert set((await queue.rows()).values()) == {("delivered", 1)}


async def test_the_sender_with_the_real_adapter_against_the_fake(
    queue: Queue, fake: Fake, access_token: TokenFile
) -> None:
    """Sender + FcmProvider + fake FCM: a 500 then 200 is delivered once; a 404 UNREGISTERED drops the device."""
    clock = Clock()
    clock.advance(1)
    provider = fcm_of(fake, access_token)
    sender = Sender(queue.db, {"fcm": provider, "apns": provider}, backoff_base_seconds=1, clock=clock)
    user, good, gone = uuid.uuid4(), fcm_token(), fcm_token()
    await queue.device(user, good, "fcm")
    await queue.device(user, gone, "fcm")
    await queue.notify(user)

    answers: dict[str, list[tuple[int, dict[str, str], Any]]] = {
        good: [(500, {}, fcm_error(500, "INTERNAL", "INTERNAL"))],
        gone: [(404, {}, fcm_error(404, "NOT_FOUND", "UNREGISTERED"))],
    }
    fake.choose = lambda seen: (
        answers[seen.body["message"]["token"]].pop(0) if answers[seen.body["message"]["token"]] else None
    )
    try:
        assert await sender.run_once() == 2
        assert await queue.rows() == {good: ("pending", 1)}
        assert await queue.conn.fetchval("SELECT count(*) FROM devices WHERE token = $1", gone) == 0
        clock.advance(2)
        assert await sender.run_once() == 1
        clock.advance(1000)
        assert await sender.run_once() == 0
    finally:
        await provider.aclose()
    assert await queue.rows() == {good: ("delivered", 2)}
    assert [s.body["message"]["token"] for s in fake.seen].count(good) == 2


# --- end to end on the mesh (log provider) -----------------------------------------------------------


async def test_an_event_becomes_one_push_per_device(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis, notifications_db: asyncpg.Connection
) -> None:
    a, b, c = await new_user(api), await new_user(api), await new_user(api)
    phone, tablet, sold = apns_token(), fcm_token(), fcm_token()
    for token, platform in [(phone, "apns"), (tablet, "fcm")]:
        answer = await api.put(at_token(token), json={"platform": platform}, headers=bearer(b))
        assert answer.status_code == 200, answer.text
    assert (await api.put(at_token(sold), json={"platform": "fcm"}, headers=bearer(c))).status_code == 200

    stream = stream_of(stack, "recipients")
    event = envelope(events.THOUGHT_RECEIVED, thought_id=str(uuid.uuid4()), sender=uid(a), receiver=uid(b))
    # Delivered twice: still one notification, one push per device.
    for _ in range(2):
        last = await streams.xadd(stream, event.fields())  # type: ignore[arg-type]
    await drained(streams, stream, last)

    async def delivered() -> list[asyncpg.Record] | None:
        rows = await notifications_db.fetch(
            "SELECT p.token, p.state, p.attempts FROM push_deliveries p "
            "JOIN notifications n ON n.id = p.notification_id WHERE n.event_id = $1 ORDER BY p.token",
            event.id,
        )
        return rows if rows and all(r["state"] == "delivered" for r in rows) else None

    rows = await eventually(delivered, within=15.0)
    assert sorted((r["token"], r["attempts"]) for r in rows) == sorted([(phone, 1), (tablet, 1)])
    listed = (await api.get("/v1/devices", headers=bearer(b))).json()["devices"]
    assert all("lastSuccessAt" in d for d in listed)
    # c's device got nothing of b's.
    assert await notifications_db.fetchval("SELECT count(*) FROM push_deliveries WHERE token = $1", sold) == 0
