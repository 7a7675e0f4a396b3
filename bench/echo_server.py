"""The baseline of SPEC §11: a bare grpc.aio service on uvloop that answers GetMe with a canned
user, doing no work. `python -m bench.echo_server HOST:PORT` (prints READY when it listens)."""

from __future__ import annotations

import sys

import grpc
import uvloop
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc

CANNED = auth_pb2.User(id="00000000-0000-7000-8000-000000000000", email="echo@example.com", username="echo")


class Echo(auth_pb2_grpc.AuthServiceServicer):
    async def GetMe(self, request: auth_pb2.GetMeRequest, context: grpc.aio.ServicerContext) -> auth_pb2.User:
        return CANNED


async def main(listen: str) -> None:
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(listen)
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
