"""gRPC handlers of capsule.auth.v1.AuthService: decode, authenticate, call the domain, encode.

Errors raised by the domain become rich statuses in services.common.server's handler wrapper (instrument).
"""

from __future__ import annotations

import grpc
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from google.protobuf import empty_pb2

from services.auth import deletion
from services.auth.accounts import Accounts, Session
from services.auth.deletion import AccountDeletions
from services.auth.storage import UserRecord
from services.common.people import public_profile
from services.common.timestamps import set_timestamp
from services.common.tokens import Authenticator, metadata_value


class AuthHandlers(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, accounts: Accounts, deletions: AccountDeletions, authenticator: Authenticator) -> None:
        self.accounts = accounts
        self.deletions = deletions
        self.auth = authenticator

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        session = await self.accounts.sign_up(
            email=request.email,
            username=request.username,
            password=request.password,
            first_name=request.first_name,
            last_name=request.last_name,
            avatar_url=request.avatar_url,
            country=request.country,
            idempotency_key=metadata_value(context, "idempotency-key"),
        )
        return _session(session)

    async def LogIn(self, request: auth_pb2.LogInRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        session = await self.accounts.log_in(
            email=request.email,
            username=request.username,
            password=request.password,
            client_ip=self.accounts.login_limits.client_ip(context.invocation_metadata() or (), context.peer()),
        )
        return _session(session)

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        return _session(await self.accounts.refresh(request.refresh_token))

    async def LogOut(self, request: auth_pb2.LogOutRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self.accounts.log_out(request.refresh_token)
        return empty_pb2.Empty()

    async def GetMe(self, request: auth_pb2.GetMeRequest, context: grpc.aio.ServicerContext) -> auth_pb2.User:
        caller = await self.auth.require(context)
        return _user(await self.accounts.me(caller))

    async def UpdateMe(self, request: auth_pb2.UpdateMeRequest, context: grpc.aio.ServicerContext) -> auth_pb2.User:
        caller = await self.auth.require(context)
        u = request.user
        values = {
            "username": u.username,
            "first_name": u.first_name,
            "last_name": u.last_name,
            "avatar_url": u.avatar_url,
            "country": u.country,
            "email": u.email,
        }
        return _user(await self.accounts.update_me(caller, values, list(request.update_mask.paths)))

    async def DeleteMe(self, request: auth_pb2.DeleteMeRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        caller = await self.auth.require(context)
        client_ip = self.accounts.login_limits.client_ip(context.invocation_metadata() or (), context.peer())
        await self.deletions.delete_me(caller, request.password, client_ip)
        return empty_pb2.Empty()

    async def GetAccountDeletion(
        self, request: auth_pb2.GetAccountDeletionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AccountDeletion:
        # Operators only: the mesh lets no other workload call it (protos' callers option, SPEC §12).
        row = await self.deletions.status(request.user_id)
        message = auth_pb2.AccountDeletion(
            user_id=str(row.user_id),
            state=auth_pb2.AccountDeletionState.Value(f"ACCOUNT_DELETION_STATE_{deletion.state(row)}"),
            erased_first=sorted(row.erased_first),
            erased_final=sorted(row.erased_final),
        )
        set_timestamp(message.requested_at, row.requested_at)
        set_timestamp(message.names_free_at, row.names_free_at)
        if row.sessions_ended_at is not None:
            set_timestamp(message.sessions_ended_at, row.sessions_ended_at)
        if row.completed_at is not None:
            set_timestamp(message.completed_at, row.completed_at)
        return message

    async def CheckUsername(
        self, request: auth_pb2.CheckUsernameRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CheckUsernameResponse:
        username, available = await self.accounts.username_available(request.username)
        return auth_pb2.CheckUsernameResponse(username=username, available=available)

    async def GetUsers(
        self, request: auth_pb2.GetUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetUsersResponse:
        await self.auth.require(context)
        users = await self.accounts.profiles(list(request.ids))
        return auth_pb2.GetUsersResponse(users=[public_profile(u) for u in users])

    async def SearchUsers(
        self, request: auth_pb2.SearchUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SearchUsersResponse:
        caller = await self.auth.require(context)
        page = await self.accounts.search(caller, request.query, request.page_size, request.page_token)
        users = [public_profile(h) for h in page.rows]
        return auth_pb2.SearchUsersResponse(users=users, next_page_token=page.next_page_token)


def _user(user: UserRecord) -> auth_pb2.User:
    message = auth_pb2.User(
        id=str(user.id),
        email=user.email,
        username=user.username,
        first_name=user.first_name,
        last_name=user.last_name,
        avatar_url=user.avatar_url,
        country=user.country,
    )
    set_timestamp(message.created_at, user.created_at)
    set_timestamp(message.updated_at, user.updated_at)
    return message


def _session(session: Session) -> auth_pb2.Session:
    return auth_pb2.Session(
        user=_user(session.user),
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        expires_in=session.expires_in,
    )
