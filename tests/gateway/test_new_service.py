"""A service the gateway has never seen, declared only by its proto module, is served end to end:
additional bindings, nested path variables, custom verbs, `response_body`, enums in the query.

The module is built at test time (a FileDescriptorProto added to the default pool, registered in
sys.modules) and served by a generic gRPC handler that echoes what it received.
"""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from gateway.app import create_app
from gateway.descriptors import http_bindings, load_services
from gateway.settings import Settings
from tests.gateway.conftest import serve

MODULE = "gwtest.items.v1.items_pb2"
FDP = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="gwtest/items/v1/items.proto", package="gwtest.items.v1", syntax="proto3"
    )
    file.dependency.append("google/api/annotations.proto")
    status = file.enum_type.add(name="ItemStatus")
    for number, name in enumerate(("ITEM_STATUS_UNSPECIFIED", "ITEM_STATUS_DRAFT", "ITEM_STATUS_PUBLISHED")):
        status.value.add(name=name, number=number)
    owner = file.message_type.add(name="Owner")
    owner.field.add(name="id", number=1, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL, json_name="id")
    item = file.message_type.add(name="Item")
    for name, number, kind, label, extra in (
        ("id", 1, FDP.TYPE_STRING, FDP.LABEL_OPTIONAL, {}),
        ("display_name", 2, FDP.TYPE_STRING, FDP.LABEL_OPTIONAL, {}),
        ("status", 3, FDP.TYPE_ENUM, FDP.LABEL_OPTIONAL, {"type_name": ".gwtest.items.v1.ItemStatus"}),
        ("tags", 4, FDP.TYPE_STRING, FDP.LABEL_REPEATED, {}),
        ("owner", 5, FDP.TYPE_MESSAGE, FDP.LABEL_OPTIONAL, {"type_name": ".gwtest.items.v1.Owner"}),
        ("size", 6, FDP.TYPE_INT64, FDP.LABEL_OPTIONAL, {}),
    ):
        json_name = "".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_")))
        item.field.add(name=name, number=number, type=kind, label=label, json_name=json_name, **extra)
    wrapper = file.message_type.add(name="ItemRequest")
    wrapper.field.add(
        name="item", number=1, type=FDP.TYPE_MESSAGE, label=FDP.LABEL_OPTIONAL,
        type_name=".gwtest.items.v1.Item", json_name="item",
    )  # fmt: skip
    reply = file.message_type.add(name="ItemReply")
    reply.field.add(
        name="item", number=1, type=FDP.TYPE_MESSAGE, label=FDP.LABEL_OPTIONAL,
        type_name=".gwtest.items.v1.Item", json_name="item",
    )  # fmt: skip
    reply.field.add(name="note", number=2, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL, json_name="note")

    service = file.service.add(name="ItemService")
    rules = {
        "GetItem": http_pb2.HttpRule(
            get="/v1/items/{id}", additional_bindings=[http_pb2.HttpRule(get="/v1/owners/{owner.id}/items/{id}")]
        ),
        "ListItems": http_pb2.HttpRule(get="/v1/items"),
        "PublishItem": http_pb2.HttpRule(post="/v1/items/{id}:publish", body="*"),
        "UpdateItem": http_pb2.HttpRule(patch="/v1/items/{item.id}", body="item", response_body="item"),
        "Internal": None,
    }
    for name, rule in rules.items():
        method = service.method.add(name=name)
        method.input_type = ".gwtest.items.v1.ItemRequest" if name == "UpdateItem" else ".gwtest.items.v1.Item"
        method.output_type = ".gwtest.items.v1.ItemReply"
        if rule is not None:
            method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return file


@pytest.fixture(scope="module")
def items_module() -> Iterator[types.ModuleType]:
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName("gwtest/items/v1/items.proto")
    except KeyError:
        file = pool.Add(_file()) or pool.FindFileByName("gwtest/items/v1/items.proto")
    module = types.ModuleType(MODULE)
    module.DESCRIPTOR = file  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    yield module
    del sys.modules[MODULE]


def message_class(name: str) -> type[Message]:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(f"gwtest.items.v1.{name}"))


@pytest.fixture(scope="module")
async def items_gateway(items_module: types.ModuleType) -> AsyncIterator[str]:
    item_type, request_type, reply_type = (
        message_class("Item"),
        message_class("ItemRequest"),
        message_class("ItemReply"),
    )

    def handler(method: str, input_type: type[Message]) -> grpc.RpcMethodHandler:
        async def echo(request: Any, context: grpc.aio.ServicerContext) -> Message:
            item = request.item if method == "UpdateItem" else request
            mask = ",".join(f"{k}={v}" for k, v in context.invocation_metadata() or () if k == "x-request-id")
            return reply_type(item=item, note=f"{method} {mask}")

        return grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=input_type.FromString, response_serializer=reply_type.SerializeToString
        )

    methods = {name: handler(name, item_type) for name in ("GetItem", "ListItems", "PublishItem")}
    methods["UpdateItem"] = handler("UpdateItem", request_type)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("gwtest.items.v1.ItemService", methods)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = Settings(
        proto_modules=("capsule.auth.v1.auth_pb2", MODULE),
        upstream="127.0.0.1:1",  # auth: nowhere; the items service has its own target
        upstream_overrides={"GWTEST_ITEMS_V1_ITEMSERVICE": f"127.0.0.1:{port}"},
    )
    async with serve(create_app(settings)) as url:
        yield url
    await server.stop(grace=None)


def test_bindings_include_additional_ones_and_skip_unannotated_methods(items_module: types.ModuleType) -> None:
    bindings = http_bindings(load_services([MODULE]))
    assert [(b.rpc.name, b.verb, b.template, b.index) for b in bindings] == [
        ("GetItem", "GET", "/v1/items/{id}", 0),
        ("GetItem", "GET", "/v1/owners/{owner.id}/items/{id}", 1),
        ("ListItems", "GET", "/v1/items", 0),
        ("PublishItem", "POST", "/v1/items/{id}:publish", 0),
        ("UpdateItem", "PATCH", "/v1/items/{item.id}", 0),
    ]
    # A module whose services have no annotations (internal RPCs) adds no route.
    assert http_bindings(load_services(["capsule.recipients.v1.relationships_pb2"])) == []


async def test_a_new_service_is_served_without_gateway_code(items_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=items_gateway) as http:
        get = await http.get("/v1/items/i1", params={"status": "published", "tags": ["a", "b"], "size": "12"})
        nested = await http.get("/v1/owners/o1/items/i2")
        listed = await http.get("/v1/items?owner.id=o2&displayName=x&status=ITEM_STATUS_DRAFT")
        published = await http.post("/v1/items/i3:publish", json={"displayName": "Three"})
        updated = await http.patch("/v1/items/i4", json={"displayName": "Four", "size": "9007199254740993"})
        bad = await http.get("/v1/items/i1?status=archived")
        verb = await http.get("/v1/items/i3:publish")
        openapi = (await http.get("/openapi.json")).json()

    assert get.status_code == 200, get.text
    item = get.json()["item"]
    assert (item["id"], item["status"], item["tags"], item["size"]) == ("i1", "ITEM_STATUS_PUBLISHED", ["a", "b"], "12")
    assert get.json()["note"].startswith("GetItem x-request-id=")
    assert nested.json()["item"]["owner"] == {"id": "o1"}
    assert nested.json()["item"]["id"] == "i2"
    assert listed.json()["item"]["owner"] == {"id": "o2"}
    assert listed.json()["item"]["status"] == "ITEM_STATUS_DRAFT"
    assert published.json()["item"]["id"] == "i3"
    assert published.json()["item"]["displayName"] == "Three"
    # response_body: the answer is the `item` field itself.
    assert updated.status_code == 200, updated.text
    assert updated.json()["id"] == "i4"
    assert updated.json()["size"] == "9007199254740993"
    assert bad.status_code == 400
    assert bad.json()["fieldViolations"] == [{"field": "status", "description": "must be one of draft, published"}]
    assert verb.status_code == 405
    assert verb.headers["allow"] == "POST"

    operation_ids = {op["operationId"] for item in openapi["paths"].values() for op in item.values()}
    assert {"GetItem", "GetItem_2", "ListItems", "PublishItem", "UpdateItem", "SignUp"} <= operation_ids
    assert "/v1/owners/{owner.id}/items/{id}" in openapi["paths"]
    list_params = {p["name"] for p in openapi["paths"]["/v1/items"]["get"]["parameters"]}
    assert {"id", "displayName", "status", "tags", "owner.id", "size"} == list_params
    publish = openapi["paths"]["/v1/items/{id}:publish"]["post"]
    assert "id" not in publish["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert openapi["components"]["schemas"]["gwtest.items.v1.ItemStatus"]["enum"][1] == "ITEM_STATUS_DRAFT"
