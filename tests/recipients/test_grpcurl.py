"""grpcurl reaches the internal RelationshipService through Envoy by reflection: describe it and
call GetRelationship / ListBlockedUserIds with a token; a caller asks about themselves only."""

from __future__ import annotations

import json

import httpx

from tests.auth.test_grpcurl import grpcurl
from tests.recipients.helpers import bearer, connect, new_user, uid

SERVICE = "capsule.recipients.v1.RelationshipService"


async def test_describe_and_call_relationship_through_envoy(envoy_grpc: str, client: httpx.AsyncClient) -> None:
    code, out, err = await grpcurl(envoy_grpc, "describe", SERVICE)
    assert code == 0, err
    assert "rpc GetRelationship" in out and "rpc ListBlockedUserIds" in out

    a, b, c = await new_user(client), await new_user(client), await new_user(client)
    await connect(client, a, b)
    await client.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(c))
    token = ["-H", f"authorization: Bearer {a['accessToken']}"]

    async def relationship(other: str) -> dict[str, bool]:
        body = json.dumps({"userId": uid(a), "otherUserId": other})
        code, out, err = await grpcurl("-d", body, *token, envoy_grpc, f"{SERVICE}/GetRelationship")
        assert code == 0, err
        return json.loads(out or "{}")  # type: ignore[no-any-return]

    assert await relationship(uid(b)) == {"connected": True}
    assert await relationship(uid(c)) == {"blocked": True}
    # The change is visible at once (the cached answer is rewritten on every change).
    await client.delete(f"/v1/connections/{uid(b)}", headers=bearer(a))
    assert await relationship(uid(b)) == {}

    code, out, err = await grpcurl(
        "-d", json.dumps({"userId": uid(a)}), *token, envoy_grpc, f"{SERVICE}/ListBlockedUserIds"
    )
    assert code == 0, err
    listed = json.loads(out)
    # grpcurl prints the proto field name or its JSON name depending on the descriptor it was given.
    assert listed.get("userIds", listed.get("user_ids")) == [uid(c)], out

    # Someone else's relationships: refused; no token: unauthenticated.
    body = json.dumps({"userId": uid(b), "otherUserId": uid(a)})
    code, out, err = await grpcurl("-d", body, *token, envoy_grpc, f"{SERVICE}/GetRelationship")
    assert code != 0 and "PermissionDenied" in err
    code, out, err = await grpcurl("-d", body, envoy_grpc, f"{SERVICE}/GetRelationship")
    assert code != 0 and "Unauthenticated" in err
