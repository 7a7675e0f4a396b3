"""User journeys for Locust, through the gateway's HTTP/JSON API (SPEC §8).

    python -m locust -f loadtest/journeys.py --headless --host http://127.0.0.1:8080 \
        --users 20 --spawn-rate 10 --run-time 30s [--capsule-lead 65]

(`make load` runs it against a mesh of its own or the running `make up`; README "Load generator".)

Each simulated user is a new account and lives the app's main journey once, then keeps using it:

    sign up → log in → (lobby) → search the partner → connection request → the partner accepts
    → list recipients (the linked one) → send capsules, list the inbox, open the ready ones

Pairing: a user with nobody to connect to waits in this process's lobby (checking its inbox
meanwhile); the next user to look for a partner takes the one waiting longest, finds it by
username, sends it a connection request and tells it so; the waiting user lists its incoming
requests and accepts that one. Accepting creates a linked recipient on both sides (SPEC §5), which
each side then looks up to send capsules to the other. Users are greenlets of one process, so the
lobby needs no lock; with Locust's distributed mode every worker pairs its own users.

Every request is named by its route template (`POST /v1/capsules/{id}:open`), so Locust groups
its statistics by step. Any non-2xx answer is a failure (Locust's default for `catch_response`),
and so is a 2xx answer without what the journey needs from it. A read that may lag (a sign-up
found by search, SPEC's read replicas) is not a failure: the journey falls back or tries again.

`--capsule-lead SECONDS`: how far ahead a capsule unlocks. The services refuse less than
CAPSULE_MIN_UNLOCK_LEAD_SECONDS (60 by SPEC §6, so the default is 65); a test stack lowers that
minimum so that capsules turn ready, and are opened, within a short run.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from locust import HttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.clients import ResponseContextManager

PASSWORD = "load generator password"
# Refresh the access token this long before it expires (SPEC §3: 15 minutes).
REFRESH_MARGIN = timedelta(seconds=60)
# At most this many ready capsules are opened per turn (a user with a backlog opens it over turns).
OPEN_PER_TURN = 5


@events.init_command_line_parser.add_listener
def _add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--capsule-lead",
        type=float,
        default=65.0,
        env_var="LOADTEST_CAPSULE_LEAD_SECONDS",
        help="seconds between sending a capsule and its unlocksAt (≥ the services' CAPSULE_MIN_UNLOCK_LEAD_SECONDS)",
    )


# The users of this process waiting for a partner, longest waiting first.
LOBBY: deque[JourneyUser] = deque()


class JourneyFailed(Exception):
    """A step answered 2xx without what the journey needs (already recorded as a failure)."""


def _body(response: ResponseContextManager, *keys: str) -> dict[str, Any]:
    """The JSON object of a 2xx response that carries `keys`; else the request is a failure.
    (Marked here, not left to Locust's status check: raising out of the `with` block skips it.)"""
    if not response.ok:
        response.failure(f"{response.status_code}: {response.text[:300]}")
        raise JourneyFailed
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        response.failure(f"not JSON: {response.text[:200]!r}")
        raise JourneyFailed from None
    if not isinstance(body, dict) or any(key not in body for key in keys):
        response.failure(f"missing {keys} in {response.text[:200]!r}")
        raise JourneyFailed
    return body


class JourneyUser(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.username = "lt" + uuid.uuid4().hex[:20]
        self.user_id = ""
        self.access_token = ""
        self.refresh_token = ""
        self.token_expires = datetime.now(UTC)
        # Pairing: the partner (once a request went either way), who asked us, whether it is accepted.
        self.partner: JourneyUser | None = None
        self.requested_by: JourneyUser | None = None
        self.accepted = False
        self.recipient_id = ""  # our recipient linked to the partner: where capsules go
        self.stopped = False
        self.sign_up()
        self.log_in()

    def on_stop(self) -> None:
        self.stopped = True
        if self in LOBBY:
            LOBBY.remove(self)

    # --- the journey, one turn at a time --------------------------------------------------------------

    @task
    def turn(self) -> None:
        try:
            if not self.user_id:
                self.sign_up()
                self.log_in()
            elif datetime.now(UTC) > self.token_expires - REFRESH_MARGIN:
                self.refresh()
            if self.recipient_id:
                self.send_capsule()
                self.open_ready()
                self.list_inbox()
            elif self.requested_by is not None and not self.accepted:
                self.accept_request(self.requested_by)
            elif self.partner is not None:
                if self.accepted:
                    self.find_linked_recipient()
                # else: our request waits for the partner's accept
            else:
                self.find_partner()
        except JourneyFailed:
            pass  # recorded by the step; the next turn starts over from the state reached

    def find_partner(self) -> None:
        other = next((u for u in LOBBY if u is not self and not u.stopped), None)
        if other is None:
            if self not in LOBBY:
                LOBBY.append(self)
            self.list_inbox()  # while waiting: what an idle user does
            return
        LOBBY.remove(other)
        if self in LOBBY:
            LOBBY.remove(self)
        other_id = self.search(other.username) or other.user_id
        self.partner = other
        try:
            self.send_request(other_id)
        except JourneyFailed:
            self.partner = None
            LOBBY.appendleft(other)
            raise
        other.partner = self
        other.requested_by = self

    # --- steps (one request each, named by route template) --------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}

    def _take_tokens(self, body: dict[str, Any]) -> None:
        self.access_token = str(body["accessToken"])
        self.refresh_token = str(body["refreshToken"])
        self.token_expires = datetime.now(UTC) + timedelta(seconds=int(body.get("expiresIn") or 900))

    def sign_up(self) -> None:
        payload = {
            "email": f"{self.username}@load.example",
            "username": self.username,
            "password": PASSWORD,
            "firstName": "Load",
            "lastName": self.username[2:10],
        }
        with self.client.post(
            "/v1/auth:signup",
            json=payload,
            headers={"idempotency-key": str(uuid.uuid4())},
            name="POST /v1/auth:signup",
            catch_response=True,
        ) as response:
            body = _body(response, "user", "accessToken", "refreshToken")
            self.user_id = str(body["user"]["id"])
            self._take_tokens(body)

    def log_in(self) -> None:
        with self.client.post(
            "/v1/auth:login",
            json={"username": self.username, "password": PASSWORD},
            name="POST /v1/auth:login",
            catch_response=True,
        ) as response:
            self._take_tokens(_body(response, "accessToken", "refreshToken"))

    def refresh(self) -> None:
        with self.client.post(
            "/v1/auth:refresh",
            json={"refreshToken": self.refresh_token},
            name="POST /v1/auth:refresh",
            catch_response=True,
        ) as response:
            self._take_tokens(_body(response, "accessToken", "refreshToken"))

    def search(self, username: str) -> str:
        """The id of `username` from the search, "" when the search does not show it yet (a new
        sign-up may not have reached the replica the search reads: not a failure)."""
        with self.client.get(
            "/v1/users:search",
            params={"query": username, "pageSize": 10},
            headers=self._auth(),
            name="GET /v1/users:search",
            catch_response=True,
        ) as response:
            users = _body(response).get("users") or []
            return next((str(u["id"]) for u in users if u.get("username") == username), "")

    def send_request(self, to_user_id: str) -> None:
        with self.client.post(
            "/v1/connection-requests",
            json={"toUserId": to_user_id, "message": "Let's exchange letters"},
            headers={**self._auth(), "idempotency-key": str(uuid.uuid4())},
            name="POST /v1/connection-requests",
            catch_response=True,
        ) as response:
            _body(response, "id")

    def accept_request(self, requester: JourneyUser) -> None:
        with self.client.get(
            "/v1/connection-requests",
            params={"direction": "incoming", "pageSize": 20},
            headers=self._auth(),
            name="GET /v1/connection-requests?direction=incoming",
            catch_response=True,
        ) as response:
            rows = _body(response).get("connectionRequests") or []
            request_id = next((str(r["id"]) for r in rows if r.get("fromUserId") == requester.user_id), "")
            if not request_id:
                response.failure(f"the request of {requester.username} is not among the incoming ones")
                raise JourneyFailed
        with self.client.post(
            f"/v1/connection-requests/{request_id}:accept",
            json={},
            headers=self._auth(),
            name="POST /v1/connection-requests/{id}:accept",
            catch_response=True,
        ) as response:
            _body(response)
        self.accepted = True
        requester.accepted = True
        self.find_linked_recipient()

    def find_linked_recipient(self) -> None:
        assert self.partner is not None
        with self.client.get(
            "/v1/recipients",
            params={"pageSize": 100},
            headers=self._auth(),
            name="GET /v1/recipients",
            catch_response=True,
        ) as response:
            rows = _body(response).get("recipients") or []
            linked = next((str(r["id"]) for r in rows if r.get("linkedUserId") == self.partner.user_id), "")
            if not linked:
                # Accepting creates it in the same transaction (SPEC §5), read-your-writes for both.
                response.failure(f"no recipient linked to {self.partner.username} after the accept")
                raise JourneyFailed
            self.recipient_id = linked

    def send_capsule(self) -> None:
        lead = float(self.environment.parsed_options.capsule_lead) if self.environment.parsed_options else 65.0
        unlocks_at = datetime.now(UTC) + timedelta(seconds=lead)
        payload = {
            "recipientId": self.recipient_id,
            "title": "A letter from the load generator",
            "body": "Dear future you, " + "this letter waits for its time. " * 10,
            "unlocksAt": unlocks_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        with self.client.post(
            "/v1/capsules",
            json=payload,
            headers={**self._auth(), "idempotency-key": str(uuid.uuid4())},
            name="POST /v1/capsules",
            catch_response=True,
        ) as response:
            _body(response, "id")

    def list_inbox(self) -> None:
        with self.client.get(
            "/v1/capsules",
            params={"box": "inbox", "pageSize": 20},
            headers=self._auth(),
            name="GET /v1/capsules?box=inbox",
            catch_response=True,
        ) as response:
            _body(response)

    def open_ready(self) -> None:
        with self.client.get(
            "/v1/capsules",
            params={"box": "inbox", "status": "ready", "pageSize": OPEN_PER_TURN},
            headers=self._auth(),
            name="GET /v1/capsules?box=inbox&status=ready",
            catch_response=True,
        ) as response:
            ready = [str(c["id"]) for c in _body(response).get("capsules") or []]
        for capsule_id in ready:
            with self.client.post(
                f"/v1/capsules/{capsule_id}:open",
                json={},
                headers=self._auth(),
                name="POST /v1/capsules/{id}:open",
                catch_response=True,
            ) as response:
                if _body(response).get("body") in (None, ""):
                    response.failure("an opened capsule without its body")
