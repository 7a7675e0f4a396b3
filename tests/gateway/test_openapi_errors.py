"""The error statuses `/openapi.json` declares per operation (gateway/openapi_errors.py), held to
the services: the explicit method lists say what the handlers do, and every operation gets each
status its rules give."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import jsonschema

from gateway import openapi_errors
from gateway.descriptors import http_bindings, load_services
from gateway.openapi import openapi_document
from gateway.routing import RouteTable
from mesh.topology import gateway_proto_modules

HANDLER_MODULES = (
    "services.auth.handlers",
    "services.capsules.handlers",
    "services.capsules.invites_handlers",
    "services.capsules.replies_shares_handlers",
    "services.capsules.self_letters_handlers",
    "services.notifications.handlers",
    "services.notifications.devices_handlers",
    "services.recipients.handlers",
)


def routes() -> list[Any]:
    return RouteTable(http_bindings(load_services(gateway_proto_modules().split(",")))).routes


def handler_sources() -> dict[str, str]:
    """Method full name ("capsule.auth.v1.AuthService.SignUp") → its handler's source."""
    sources: dict[str, str] = {}
    for module_name in HANDLER_MODULES:
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            for base in cls.__mro__[1:]:
                # The generated `<Service>Servicer` of `capsule.<pkg>.v1.<file>_pb2_grpc`.
                if not base.__name__.endswith("Servicer") or not base.__module__.endswith("_pb2_grpc"):
                    continue
                package = base.__module__.rsplit(".", 1)[0]
                service = f"{package}.{base.__name__.removesuffix('Servicer')}"
                for name, member in vars(cls).items():
                    if inspect.iscoroutinefunction(member):
                        sources[f"{service}.{name}"] = inspect.getsource(member)
    return sources


def test_the_method_lists_say_what_the_handlers_do() -> None:
    sources = handler_sources()
    names = {openapi_errors.method_name(route) for route in routes()}
    assert names <= set(sources), sorted(names - set(sources))
    anonymous = {name for name in names if "self.auth.require(" not in sources[name]}
    declared = {openapi_errors.method_name(route) for route in routes() if not openapi_errors.needs_token(route)}
    assert anonymous == declared
    reads_key = {name for name in names if '"idempotency-key"' in sources[name]}
    assert reads_key == openapi_errors.IDEMPOTENT_CREATES
    for listed in (openapi_errors.CREDENTIAL_METHODS, openapi_errors.CONFLICTS, openapi_errors.PERMISSION_CHECKS):
        assert set(listed) <= names
    assert names >= openapi_errors.NEVER_NOT_FOUND


def test_each_operation_lists_the_statuses_its_rules_give() -> None:
    document = openapi_document(routes())
    operations = {
        f"{verb.upper()} {path}": operation
        for path, item in document["paths"].items()
        for verb, operation in item.items()
    }
    statuses = {name: sorted(int(s) for s in op["responses"] if s != "200") for name, op in operations.items()}
    everywhere = [400, 429, 500, 503, 504]
    assert statuses["GET /v1/themes"] == everywhere
    assert statuses["GET /v1/me"] == [400, 401, 429, 500, 503, 504]
    assert statuses["POST /v1/auth:login"] == [400, 401, 413, 415, 429, 500, 503, 504]
    assert statuses["POST /v1/auth:logout"] == [400, 413, 415, 429, 500, 503, 504]
    assert statuses["DELETE /v1/me"] == [400, 401, 403, 413, 415, 429, 500, 503, 504]
    assert statuses["GET /v1/capsules/{id}"] == [400, 401, 404, 429, 500, 503, 504]
    assert statuses["POST /v1/capsules"] == [400, 401, 404, 409, 413, 415, 429, 500, 503, 504]
    assert statuses["GET /v1/usernames/{username}"] == everywhere
    assert statuses["GET /v1/shares/{token}"] == [400, 404, 429, 500, 503, 504]
    for name, operation in operations.items():
        for status, response in operation["responses"].items():
            if status != "200":
                assert response["$ref"] == f"#/components/responses/Problem{status}", name
                assert response["description"], name
        # The Idempotency-Key header only where a service reads it.
        takes_key = {"$ref": "#/components/parameters/IdempotencyKey"} in operation.get("parameters", [])
        assert takes_key == (
            409 in statuses[name] and "IDEMPOTENCY_KEY_REUSED" in operation["responses"]["409"]["description"]
        )
    for status, response in document["components"]["responses"].items():
        example = response["content"]["application/problem+json"]["example"]
        assert f"Problem{example['status']}" == status
        jsonschema.validate(example, document["components"]["schemas"]["Problem"])
