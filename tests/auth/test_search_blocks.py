"""Search leaves out everyone in a block relation with the caller, through the BlockList interface.

Here a stub of the recipients service's RelationshipService (a real gRPC server on a free port)
stands behind that interface: an extra auth instance is started with RECIPIENTS_TARGET pointing at
the stub and searched over gRPC, so the exclusion is shown independently of the real recipients
service (whose own tests block through the gateway). The stack's users here have no blocks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from capsule.recipients.v1 import relationships_pb2, relationships_pb2_grpc

from launcher.infra import Infra
from launcher.process import free_port
from launcher.stack import Stack
from mesh.credentials import add_port
from mesh.pki import ENVOY
from mesh.topology import AUTH
from tests.auth.test_auth_http import bearer, sign_up
from tests.replica import replayed


class StubRelationships(relationships_pb2_grpc.RelationshipServiceServicer):
    def __init__(self) -> None:
        self.blocked: dict[str, list[str]] = {}
        self.seen_tokens: list[str] = []
        self.seen_time_remaining: list[float | None] = []

    async def ListBlockedUserIds(
        self, request: relationships_pb2.ListBlockedUserIdsRequest, context: grpc.aio.ServicerContext
    ) -> relationships_pb2.ListBlockedUserIdsResponse:
        self.seen_tokens += [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        self.seen_time_remaining.append(context.time_remaining())
        return relationships_pb2.ListBlockedUserIdsResponse(user_ids=self.blocked.get(request.user_id, []))


@pytest.fixture
async def stub(stack: Stack) -> AsyncIterator[tuple[StubRelationships, grpc.aio.Server, str]]:
    servicer = StubRelationships()
    server = grpc.aio.server()
    relationships_pb2_grpc.add_RelationshipServiceServicer_to_server(servicer, server)
    # In Envoy's place (auth dials RECIPIENTS_TARGET as Envoy): Envoy's certificate.
    address = f"127.0.0.1:{add_port(server, '127.0.0.1:0', stack.identity(ENVOY))}"
    await server.start()
    yield servicer, server, address
    await server.stop(None)


async def start_auth_with_block_list(stack: Stack, recipients_target: str) -> tuple[Any, str]:
    address = f"127.0.0.1:{free_port()}"
    env = stack.service_env(stack.instances["auth"][0])
    env.update(GRPC_LISTEN=address, ADMIN_LISTEN=f"127.0.0.1:{free_port()}", RECIPIENTS_TARGET=recipients_target)
    process = await asyncio.to_thread(
        stack.spawn,
        f"auth-blocklist-{uuid.uuid4().hex[:6]}",
        [stack.settings.python, "-m", "services.auth"],
        env=env,
        ready=stack.health_probe(address, AUTH),
    )
    return process, address


async def test_search_excludes_block_relations_both_ways(
    stack: Stack, infra: Infra, client: httpx.AsyncClient, stub: tuple[StubRelationships, grpc.aio.Server, str]
) -> None:
    servicer, server, stub_address = stub
    tag = "sb" + uuid.uuid4().hex[:10]  # unlike any other test's names (search matches trigrams)
    me = await sign_up(client, lastName=tag)
    i_blocked = await sign_up(client, lastName=tag)
    blocked_me = await sign_up(client, lastName=tag)
    stranger = await sign_up(client, lastName=tag)
    servicer.blocked[me["user"]["id"]] = [i_blocked["user"]["id"], blocked_me["user"]["id"]]
    # Search reads a replica: others' sign-ups show up within the lag bound (README "Read
    # replicas"); blocks are what is tested here. (Seen once under the full suite: 1 of 3 found.)
    await replayed(infra)

    # Nobody blocked anybody in the real recipients service: only the caller is left out.
    everyone = await client.get("/v1/users:search", params={"query": tag}, headers=bearer(me))
    assert {u["id"] for u in everyone.json()["users"]} == {
        i_blocked["user"]["id"],
        blocked_me["user"]["id"],
        stranger["user"]["id"],
    }

    process, address = await start_auth_with_block_list(stack, stub_address)
    try:
        async with stack.channel_to(address, AUTH.name) as channel:
            search = auth_pb2_grpc.AuthServiceStub(channel).SearchUsers
            metadata = (("authorization", f"Bearer {me['accessToken']}"),)
            reply = await search(auth_pb2.SearchUsersRequest(query=tag), metadata=metadata, timeout=10)
            assert [u.id for u in reply.users] == [stranger["user"]["id"]]
            assert servicer.seen_tokens[-1] == f"Bearer {me['accessToken']}"  # asked on the caller's behalf

            # The blocked side is excluded the same way (the stub answers for them too).
            servicer.blocked[blocked_me["user"]["id"]] = [me["user"]["id"]]
            their = await search(
                auth_pb2.SearchUsersRequest(query=tag),
                metadata=(("authorization", f"Bearer {blocked_me['accessToken']}"),),
                timeout=10,
            )
            assert me["user"]["id"] not in [u.id for u in their.users]

            # No block list, no results: search fails closed rather than show blocked people.
            await server.stop(None)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await search(auth_pb2.SearchUsersRequest(query=tag + "x"), metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await asyncio.to_thread(process.stop)


async def test_the_block_list_is_asked_within_the_callers_deadline(
    stack: Stack, client: httpx.AsyncClient, stub: tuple[StubRelationships, grpc.aio.Server, str]
) -> None:
    """A call made while serving another gets what is left of the caller's deadline, not the
    service's own fixed bound (2 s for the block list): no work outlives the request it is for."""
    servicer, _, stub_address = stub
    me = await sign_up(client)
    process, address = await start_auth_with_block_list(stack, stub_address)
    try:
        async with stack.channel_to(address, AUTH.name) as channel:
            search = auth_pb2_grpc.AuthServiceStub(channel).SearchUsers
            metadata = (("authorization", f"Bearer {me['accessToken']}"),)
            await search(auth_pb2.SearchUsersRequest(query="zz" + uuid.uuid4().hex[:6]), metadata=metadata, timeout=0.9)
            (remaining,) = servicer.seen_time_remaining
            assert remaining is not None and 0 < remaining <= 0.9
    finally:
        await asyncio.to_thread(process.stop)
