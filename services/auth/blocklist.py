"""Who is in a block relation with a user: the recipients service knows (SPEC §5); search asks it.

`BlockList` is the interface the search depends on. Until the recipients service exists the app
uses `NobodyBlocked`; once RECIPIENTS_TARGET is set it asks the service over gRPC (through Envoy).
"""

from __future__ import annotations

import uuid
from typing import Protocol

import grpc
from capsule.recipients.v1 import relationships_pb2, relationships_pb2_grpc

from mesh.credentials import MeshTLS
from services.common.clients import call_timeout, channel, forward_metadata
from services.common.errors import Unavailable
from services.common.ids import parse_uuid
from services.common.logs import request_id_var
from services.common.tokens import Caller


class BlockList(Protocol):
    async def blocked_with(self, caller: Caller) -> list[uuid.UUID]:
        """Everyone who blocked the caller or whom the caller blocked."""
        ...

    async def close(self) -> None: ...


class NobodyBlocked:
    async def blocked_with(self, caller: Caller) -> list[uuid.UUID]:
        return []

    async def close(self) -> None:
        return None


class RecipientsBlockList:
    def __init__(self, target: str, tls: MeshTLS | None, timeout_seconds: float = 2.0) -> None:
        self._channel = channel(target, tls)
        self._timeout = timeout_seconds

    async def blocked_with(self, caller: Caller) -> list[uuid.UUID]:
        try:
            response = await self._channel.stub(relationships_pb2_grpc.RelationshipServiceStub).ListBlockedUserIds(
                relationships_pb2.ListBlockedUserIdsRequest(user_id=str(caller.user_id)),
                timeout=call_timeout(self._timeout),
                metadata=forward_metadata(caller.token, request_id_var.get()),
            )
        except grpc.aio.AioRpcError as exc:
            # Fail closed: showing someone a person who blocked them is worse than no results.
            raise Unavailable(f"cannot check blocked users right now ({exc.code().name})") from exc
        return [u for u in (parse_uuid(v) for v in response.user_ids) if u is not None]

    async def close(self) -> None:
        await self._channel.close()
