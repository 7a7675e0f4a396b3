"""grpcurl reaches the internal RelationshipService through Envoy by reflection: describe it and
call GetRelationship / ListBlockedUserIds with a token; a caller asks about themselves only."""

from __future__ import annotations

import json

import httpx

from launcher.protos import grpcurl_source
from launcher.stack import Stack
from tests.auth.test_grpcurl import grpcurl
from tests.recipients.helpers import bearer, connect, new_user, uid

SERVICE = "capsule.recipients.v1.RelationshipService"


async def test_describe_and_call_relationship_through_envoy(
    stack: Stack, envoy_grpc: str, client: httpx.AsyncClient
) -> None:
    # Internal: operators see it, and only the workloads its proto names call it (SPEC §12).
    code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "describe", SERVICE)
    assert code == 0, err
    assert "rpc GetRelationship" in out and "rpc ListBlockedUserIds" in out

    a, b, c = await new_user(client), await new_user(client), await new_user(client)
    await connect(client, a, b)
    await client.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(c))
    token = ["-H", f"authorization: Bearer {a['accessToken']}"]
    # Reflection shows internal services to operators only: a workload's grpcurl reads the proto.
    proto = grpcurl_source("capsule/recipients/v1/relationships.proto")
    as_capsules, as_auth = [*stack.grpcurl_args("capsules"), *proto], [*stack.grpcurl_args("auth"), *proto]

    async def relationship(other: str) -> dict[str, bool]:
        body = json.dumps({"userId": uid(a), "otherUserId": other})
        code, out, err = await grpcurl(as_capsules, "-d", body, *token, envoy_grpc, f"{SERVICE}/GetRelationship")
        assert code == 0, err
        return json.loads(out or "{}")  # type: ignore[no-any-return]

    assert await relationship(uid(b)) == {"connected": True}
    assert await relationship(uid(c)) == {"blocked": True}
    # The change is visible at once (the cached answer is rewritten on every change).
    await client.delete(f"/v1/connections/{uid(b)}", headers=bearer(a))
    assert await relationship(uid(b)) == {}

    code, out, err = await grpcurl(
        as_auth, "-d", json.dumps({"userId": uid(a)}), *token, envoy_grpc, f"{SERVICE}/ListBlockedUserIds"
    )
    assert code == 0, err
    listed = json.loads(out)
    # grpcurl prints the proto field name or its JSON name depending on the descriptor it was given.
    assert listed.get("userIds", listed.get("user_ids")) == [uid(c)], out

    # Someone else's relationships: refused; no token: unauthenticated.
    body = json.dumps({"userId": uid(b), "otherUserId": uid(a)})
    code, out, err = await grpcurl(as_capsules, "-d", body, *token, envoy_grpc, f"{SERVICE}/GetRelationship")
    assert code != 0 and "PermissionDenied" in err
    code, out, err = await grpcurl(as_capsules, "-d", body, envoy_grpc, f"{SERVICE}/GetRelationship")
    assert code != 0 and "Unauthenticated" in err
    # A workload its proto does not name is refused whatever the token: the operator, the gateway,
    # and auth for GetRelationship (it only asks for block lists).
    mine = json.dumps({"userId": uid(a), "otherUserId": uid(b)})
    for transport in (stack.grpcurl_args(), [*stack.grpcurl_args("gateway"), *proto], as_auth):
        code, out, err = await grpcurl(transport, "-d", mine, *token, envoy_grpc, f"{SERVICE}/GetRelationship")
        assert code != 0 and "PermissionDenied" in err, (transport, err)
