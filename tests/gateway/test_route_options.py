"""The gateway's route policies come from the method options the protos declare
(capsule/common/v1/options.proto), never from paths or RPC names in its code.

- The routes the mesh serves get exactly what their protos say.
- A scratch proto, built here as a FileDescriptorProto and served by a real gateway (create_app +
  route_policies, Redis for the limits) in front of a grpc.aio server, gets the caching and the
  log-in limit its options declare: nothing in the gateway knows its paths or its method names.
- Options a method's HTTP rules could not honour fail at start-up.
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
import httpx
import pytest
from capsule.common.v1 import options_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from gateway.app import create_app
from gateway.descriptors import DescriptorError, http_bindings, load_services
from gateway.httpcache import cache_control, declared_caching
from gateway.openapi import openapi_document
from gateway.policies import route_policies
from gateway.routing import RouteTable
from gateway.settings import Settings
from launcher.infra import Infra
from mesh.topology import gateway_proto_modules
from tests.gateway.conftest import serve

Visibility = options_pb2.HttpCachePolicy.Visibility
STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING


def test_the_served_routes_get_what_their_protos_declare() -> None:
    bindings = http_bindings(load_services(gateway_proto_modules().split(",")))
    caching = {template: cache_control(declared) for template, declared in declared_caching(bindings).items()}
    assert caching == {
        "/v1/themes": "public, max-age=3600",
        "/v1/themes/{id}": "public, max-age=3600",
        "/v1/users:search": "private, max-age=30",
        "/v1/shares/{token}": "public, max-age=60",
        "/v1/invites/{token}": "public, max-age=60",
    }
    logins = {(b.verb, b.template): b.rpc.policy.login for b in bindings if b.rpc.policy.login is not None}
    assert {route: login.json_keys for route, login in logins.items()} == {
        ("POST", "/v1/auth:login"): ("email", "username")
    }
    # The OpenAPI document says it where it describes the answer.
    document = openapi_document(RouteTable(bindings).routes)
    ok = document["paths"]["/v1/themes"]["get"]["responses"]["200"]
    assert ok["headers"]["Cache-Control"]["schema"]["const"] == "public, max-age=3600"
    assert "headers" not in document["paths"]["/v1/me"]["get"]["responses"]["200"]


# --- scratch protos ---------------------------------------------------------------------------------


def method(
    name: str,
    input_type: str,
    verb: str,
    path: str,
    body: str = "",
    http_cache: options_pb2.HttpCachePolicy | None = None,
    rate_limit: options_pb2.RateLimitPolicy | None = None,
) -> descriptor_pb2.MethodDescriptorProto:
    proto = descriptor_pb2.MethodDescriptorProto(name=name, input_type=input_type, output_type="Echo")
    rule = proto.options.Extensions[annotations_pb2.http]
    setattr(rule, verb, path)
    rule.body = body
    if http_cache is not None:
        proto.options.Extensions[options_pb2.http_cache].CopyFrom(http_cache)
    if rate_limit is not None:
        proto.options.Extensions[options_pb2.rate_limit].CopyFrom(rate_limit)
    return proto


def scratch_service(methods: Sequence[descriptor_pb2.MethodDescriptorProto]) -> ServiceDescriptor:
    """A service of a new proto file in the default pool (where the generated stubs live, so its
    options are read exactly as theirs), in a package of its own: messages Echo {text} and
    Entry {user_handle, phone, email, secret}."""
    package = f"scratch.t{uuid.uuid4().hex[:12]}.v1"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/scratch.proto",
        package=package,
        syntax="proto3",
        dependency=["google/api/annotations.proto", "capsule/common/v1/options.proto"],
    )
    echo = file.message_type.add(name="Echo")
    echo.field.add(name="text", number=1, type=STRING, label=1, json_name="text")
    entry = file.message_type.add(name="Entry")
    for number, (field, json_name) in enumerate(
        (("user_handle", "userHandle"), ("phone", "phone"), ("email", "email"), ("secret", "secret")), start=1
    ):
        entry.field.add(name=field, number=number, type=STRING, label=1, json_name=json_name)
    service = file.service.add(name="ScratchService")
    for proto in methods:
        added = service.method.add()
        added.CopyFrom(proto)
        added.input_type = f".{package}.{proto.input_type}"
        added.output_type = f".{package}.{proto.output_type}"
    descriptor_pool.Default().Add(file)
    found: FileDescriptor = descriptor_pool.Default().FindFileByName(file.name)
    return found.services_by_name["ScratchService"]


def public(max_age_seconds: int) -> options_pb2.HttpCachePolicy:
    return options_pb2.HttpCachePolicy(visibility=Visibility.VISIBILITY_PUBLIC, max_age_seconds=max_age_seconds)


def login(*account_fields: str) -> options_pb2.RateLimitPolicy:
    return options_pb2.RateLimitPolicy(login=True, account_fields=account_fields)


SCRATCH = [
    # Declared public for two minutes, under a path the gateway has never heard of.
    method("Lookup", "Echo", "get", "/v1/scratch/{text}", http_cache=public(120)),
    # Declares nothing: user data, the configured private max-age.
    method("Peek", "Echo", "get", "/v1/scratch-peek"),
    # A log-in whose account is its user_handle, else its phone (and never its email).
    method("Enter", "Entry", "post", "/v1/scratch:enter", body="*", rate_limit=login("user_handle", "phone")),
    # The same request, not a log-in.
    method("Other", "Entry", "post", "/v1/scratch:other", body="*"),
]


@pytest.fixture
async def scratch_gateway(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """A real gateway serving the scratch service (a module made for it, found by name as
    GATEWAY_PROTO_MODULES finds the generated ones) in front of a grpc.aio server echoing the
    method's name; its policies are route_policies(settings), as `python -m gateway` builds them."""
    service = scratch_service(SCRATCH)
    module = types.ModuleType(f"scratch_{uuid.uuid4().hex}_pb2")
    module.DESCRIPTOR = service.file  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def echo(name: str) -> grpc.RpcMethodHandler:
        method = service.methods_by_name[name]
        request_type = message_factory.GetMessageClass(method.input_type)
        reply_type = message_factory.GetMessageClass(method.output_type)

        async def answer(request: Message, context: grpc.aio.ServicerContext) -> Message:
            return reply_type(text=name)

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=request_type.FromString, response_serializer=reply_type.SerializeToString
        )

    upstream = grpc.aio.server()
    upstream.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                service.full_name, {name: echo(name) for name in service.methods_by_name}
            )
        ]
    )
    port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    settings = Settings(
        proto_modules=(module.__name__,),
        upstream=f"127.0.0.1:{port}",
        redis_url=infra.redis_url,
        cache_prefix=f"test:{uuid.uuid4().hex}:",
        ratelimit_ip=(1000, 60.0),
        ratelimit_login=(1, 3600.0),
        cache_private_max_age=7,
    )
    policies, closers = route_policies(settings)
    try:
        async with (
            serve(create_app(settings, policies=policies, on_shutdown=closers)) as url,
            httpx.AsyncClient(base_url=url, timeout=10.0) as http,
        ):
            yield http
    finally:
        await upstream.stop(grace=None)


async def test_a_scratch_protos_options_set_its_caching_and_its_log_in_limit(
    scratch_gateway: httpx.AsyncClient,
) -> None:
    http = scratch_gateway
    lookup = await http.get("/v1/scratch/x")
    assert lookup.status_code == 200 and lookup.json() == {"text": "Lookup"}
    assert lookup.headers["cache-control"] == "public, max-age=120"
    assert (await http.get("/v1/scratch-peek")).headers["cache-control"] == "private, max-age=7"

    async def enter(body: dict[str, str]) -> int:
        return (await http.post("/v1/scratch:enter", json=body)).status_code

    # One attempt per (address, account) an hour: the account is the declared field, in either
    # JSON spelling, lower-cased; the next declared field names another account.
    assert await enter({"userHandle": "Ann", "secret": "a"}) == 200
    refused = await http.post("/v1/scratch:enter", json={"user_handle": " ann ", "secret": "b"})
    assert refused.status_code == 429 and refused.json()["reason"] == "RATE_LIMITED"
    assert await enter({"phone": "555-0100"}) == 200
    assert await enter({"phone": "555-0100"}) == 429
    # A field not declared an account field names no account: only the per-address limit applies.
    assert [await enter({"email": "ann"}) for _ in range(3)] == [200, 200, 200]
    # The same request to a method that is not declared a log-in is not limited per account.
    others = [(await http.post("/v1/scratch:other", json={"userHandle": "ann"})).status_code for _ in range(3)]
    assert others == [200, 200, 200]


def entry_method(
    body: str = "*", rate_limit: options_pb2.RateLimitPolicy | None = None
) -> descriptor_pb2.MethodDescriptorProto:
    return method("Enter", "Entry", "post", "/v1/enter", body=body, rate_limit=rate_limit)


@pytest.mark.parametrize(
    ("declared", "error"),
    [
        (entry_method(rate_limit=login("nickname")), "account field 'nickname' is not a string field of"),
        (entry_method(rate_limit=login()), "must name its account_fields"),
        (entry_method(rate_limit=options_pb2.RateLimitPolicy(account_fields=["phone"])), "only read for a log-in"),
        (entry_method(body="user_handle", rate_limit=login("phone")), 'every http rule needs body "\\*"'),
        (method("Touch", "Echo", "post", "/v1/touch", body="*", http_cache=public(60)), "no http rule of it is a GET"),
    ],
    ids=["unknown-account-field", "no-account-fields", "fields-without-login", "body-not-star", "cache-without-get"],
)
def test_options_the_http_rules_cannot_honour_fail_at_start_up(
    declared: descriptor_pb2.MethodDescriptorProto, error: str
) -> None:
    service = scratch_service([declared])
    with pytest.raises(DescriptorError, match=error):
        http_bindings([service])
