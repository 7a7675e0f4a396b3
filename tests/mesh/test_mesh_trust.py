"""SPEC §12 on the running mesh (the session stack: mutual TLS everywhere, certificates the stack
issued from set-up's mesh CA).

- Envoy's listener and every service port refuse a client without a certificate, or with one from
  another CA.
- Who may call what is decided by the caller's certificate, at Envoy (RBAC) and again at the
  service (whatever path the call took): GetUsers, internal, answers recipients and capsules only;
  a user holding a valid token but calling as the gateway or an operator is refused, so a blocked
  user cannot read the blocker's profile by id (issue 11, finding 4).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from launcher.stack import Stack
from mesh.credentials import MeshTLS, open_channel
from mesh.pki import ENVOY, MeshCA
from mesh.topology import AUTH
from tests.auth.test_auth_http import bearer, sign_up


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def get_users(channel: grpc.aio.Channel, token: str, ids: list[str]) -> auth_pb2.GetUsersResponse:
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    response: auth_pb2.GetUsersResponse = await stub.GetUsers(
        auth_pb2.GetUsersRequest(ids=ids), metadata=(("authorization", f"Bearer {token}"),), timeout=10
    )
    return response


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await auth_pb2_grpc.AuthServiceStub(channel).CheckUsername(
                auth_pb2.CheckUsernameRequest(username="nobody1"), timeout=5
            )
    return failure.value.code()


@pytest.fixture
def impostor(tmp_path: Path) -> MeshTLS:
    """An `operator` certificate from a CA of its own."""
    MeshCA.create(tmp_path / "ca").issue("operator").write(tmp_path / "operator")
    return MeshTLS(tmp_path / "operator")


async def test_envoy_and_every_service_port_refuse_strangers(stack: Stack, impostor: MeshTLS) -> None:
    assert stack.settings.mesh_tls
    targets = [(stack.envoy_grpc, ENVOY), *((i.grpc_address, i.service.name) for i in stack.instances[AUTH.name])]
    for address, peer in targets:
        assert await refused(grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE, address
        assert await refused(open_channel(address, peer, impostor)) == grpc.StatusCode.UNAVAILABLE, address
        # The operator's own certificate is let in (the same call, answered).
        async with stack.channel_to(address, peer) as channel:
            answer = await auth_pb2_grpc.AuthServiceStub(channel).CheckUsername(
                auth_pb2.CheckUsernameRequest(username="nobody1"), timeout=5
            )
        assert answer.username == "nobody1"


async def test_internal_rpcs_answer_only_the_workloads_their_proto_names(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    blocker, blocked = await sign_up(client), await sign_up(client)
    answer = await client.post("/v1/blocks", json={"userId": blocked["user"]["id"]}, headers=bearer(blocker))
    assert answer.status_code == 200, answer.text
    wanted = [blocker["user"]["id"]]

    # Through Envoy (its RBAC) and straight to an auth instance (the service's own check).
    instance = stack.instances[AUTH.name][0].grpc_address
    for workload in ("capsules", "recipients"):
        for channel in (stack.envoy_channel(workload), stack.channel_to(instance, AUTH.name, workload)):
            async with channel:
                found = await get_users(channel, blocked["accessToken"], wanted)
            assert [u.id for u in found.users] == wanted
    for workload in ("gateway", "operator", "auth"):
        async with stack.envoy_channel(workload) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as at_envoy:
                await get_users(channel, blocked["accessToken"], wanted)
        assert at_envoy.value.code() == grpc.StatusCode.PERMISSION_DENIED, workload
        async with stack.channel_to(instance, AUTH.name, workload) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as at_service:
                await get_users(channel, blocked["accessToken"], wanted)
        assert at_service.value.code() == grpc.StatusCode.PERMISSION_DENIED, workload
        assert reason_of(at_service.value) == "CALLER_NOT_ALLOWED"

    # Over HTTP there is no route to it at all, and a profile search hides the blocker.
    search = await client.get(
        "/v1/users:search", params={"query": blocker["user"]["username"]}, headers=bearer(blocked)
    )
    assert search.status_code == 200 and search.json().get("users", []) == []
