"""What `make bench` measures: the measured user, and one Case per path, each with the one-request
check that runs before it is loaded.

    grpc-echo    gRPC baseline: a bare grpc.aio service answering GetMe with a canned user
    http-echo    HTTP baseline: the gateway's server stack (uvicorn, httptools, uvloop) answering
                 a canned small JSON
    me           GET /v1/me                       HTTP/1.1 → gateway → Envoy → auth
    inbox        GET /v1/capsules?box=inbox       … → capsules (first page: 20 rows)
    connections  GET /v1/connections              … → recipients
    grpc-me      GetMe over gRPC (h2c) → Envoy → auth

The measured user is side-by-side's: the seeded user (pf<i>) with at least 60 letters in the inbox
nearest to 100 (ties: shorter, then smaller name) and 10 connections: pf21 in SPEC §11's volume.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg
import grpc
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc

GETME = "/capsule.auth.v1.AuthService/GetMe"
PAGE = 20
CONNECTIONS = 10


@dataclass(frozen=True)
class User:
    username: str
    email: str
    id: str
    inbox: int
    connections: int


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    url: str
    # The one-request check: raises SystemExit on a wrong answer, else describes the answer.
    check: Callable[[], str] = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # gRPC: the request message (serialized); None for HTTP/1.1.
    grpc_body: bytes | None = None
    baseline: bool = False
    # (service, method) whose instances' OK counter must cover every 2xx h2load saw (gRPC errors
    # travel in trailers with HTTP status 200).
    ok_counter: tuple[str, str] | None = None

    @property
    def grpc(self) -> bool:
        return self.grpc_body is not None

    def load_options(self) -> dict[str, object]:
        """Keyword arguments of bench.h2load.run."""
        if self.grpc:
            return {"headers": dict(self.headers), "grpc_body": self.grpc_body}
        return {"headers": dict(self.headers), "http1": True}


ALL_KEYS = ("grpc-echo", "http-echo", "me", "inbox", "connections", "grpc-me")


def build_cases(
    *, gateway_url: str, envoy_grpc: str, grpc_echo: str, http_echo: str, user: User, token: str
) -> list[Case]:
    auth = {"authorization": f"Bearer {token}"}
    return [
        Case("grpc-echo", "gRPC baseline: bare grpc.aio echo", f"http://{grpc_echo}{GETME}",
             lambda: check_grpc_getme(grpc_echo, None, "echo"), grpc_body=b"", baseline=True),
        Case("http-echo", "HTTP baseline: bare uvicorn echo", f"http://{http_echo}/",
             lambda: check_http_json(f"http://{http_echo}/", None, lambda d: d.get("username") == "echo"),
             baseline=True),
        Case("me", "GET /v1/me", f"{gateway_url}/v1/me",
             lambda: check_http_json(f"{gateway_url}/v1/me", token, lambda d: d.get("id") == user.id), headers=auth),
        Case("inbox", "GET /v1/capsules?box=inbox", f"{gateway_url}/v1/capsules?box=inbox",
             lambda: check_inbox(f"{gateway_url}/v1/capsules?box=inbox", token, user), headers=auth),
        Case("connections", "GET /v1/connections", f"{gateway_url}/v1/connections",
             lambda: check_connections(f"{gateway_url}/v1/connections", token, user), headers=auth),
        Case("grpc-me", "GetMe gRPC → Envoy → auth", f"http://{envoy_grpc}{GETME}",
             lambda: check_grpc_getme(envoy_grpc, token, user.username), headers=auth, grpc_body=b"",
             ok_counter=("auth", "GetMe")),
    ]  # fmt: skip


# --- the measured user ------------------------------------------------------------------------------


async def pick_user(dsns: Mapping[str, str]) -> User:
    """The measured user (see the module's docstring)."""
    capsules = await asyncpg.connect(dsns["capsules"])
    try:
        counts = await capsules.fetch(
            "SELECT recipient_user, count(*) AS n FROM capsules WHERE deleted_at IS NULL "
            "GROUP BY recipient_user HAVING count(*) >= 60"
        )
    finally:
        await capsules.close()
    inbox = {row["recipient_user"]: int(row["n"]) for row in counts}
    auth = await asyncpg.connect(dsns["auth"])
    try:
        users = await auth.fetch(
            "SELECT id, username, email FROM users WHERE id = ANY($1::uuid[]) AND username LIKE 'pf%'", list(inbox)
        )
    finally:
        await auth.close()
    ranked = sorted(users, key=lambda u: (abs(inbox[u["id"]] - 100), len(u["username"]), u["username"]))
    recipients = await asyncpg.connect(dsns["recipients"])
    try:
        for row in ranked:
            connections = await recipients.fetchval(
                "SELECT count(*) FROM connections WHERE user_low = $1 OR user_high = $1", row["id"]
            )
            if connections == CONNECTIONS:
                return User(row["username"], row["email"], str(row["id"]), inbox[row["id"]], connections)
    finally:
        await recipients.close()
    raise SystemExit("no seeded user (pf<i>) with >= 60 inbox letters and 10 connections: is the data seeded?")


# --- checks (one request each, before loading) --------------------------------------------------------


def fetch_json(url: str, token: str | None) -> tuple[int, dict[str, object], int]:
    """(status, decoded body, body bytes) of a GET."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=15) as response:
            body = response.read()
            return int(response.status), json.loads(body), len(body)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, {"error": body[:300].decode(errors="replace")}, len(body)


def check_http_json(url: str, token: str | None, good: Callable[[dict[str, object]], bool]) -> str:
    status, data, size = fetch_json(url, token)
    if status != 200 or not good(data):
        raise SystemExit(f"check GET {url}: {status} {str(data)[:300]}")
    return f"200, {size} B"


def check_inbox(url: str, token: str, user: User) -> str:
    status, data, size = fetch_json(url, token)
    rows = data.get("capsules", [])
    assert isinstance(rows, list)
    if (
        status != 200
        or len(rows) != PAGE
        or not data.get("nextPageToken")
        or any(row.get("recipientUserId") != user.id for row in rows)
    ):
        raise SystemExit(f"check GET {url}: {status}, {len(rows)} rows, {str(data)[:300]}")
    return f"200, {len(rows)} rows + nextPageToken, {size} B"


def check_connections(url: str, token: str, user: User) -> str:
    status, data, size = fetch_json(url, token)
    rows = data.get("connections", [])
    assert isinstance(rows, list)
    if status != 200 or len(rows) != user.connections:
        raise SystemExit(f"check GET {url}: {status}, {len(rows)} connections, {str(data)[:300]}")
    return f"200, {len(rows)} connections, {size} B"


def check_grpc_getme(target: str, token: str | None, username: str) -> str:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(target) as channel:
        try:
            me = auth_pb2_grpc.AuthServiceStub(channel).GetMe(auth_pb2.GetMeRequest(), timeout=15, metadata=metadata)
        except grpc.RpcError as exc:
            raise SystemExit(f"check GetMe on {target}: {exc.code()} {exc.details()}") from None
    if me.username != username:
        raise SystemExit(f"check GetMe on {target}: answered user {me.username!r}, not {username!r}")
    return f"OK, {me.ByteSize()} B message"
