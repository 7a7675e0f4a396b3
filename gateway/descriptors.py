"""Which gRPC methods the gateway exposes, read from the generated proto modules.

Each configured module (e.g. `capsule.auth.v1.auth_pb2`) is imported; every method of every
service it declares that carries a `google.api.http` option yields one `HttpBinding` per rule
(the main rule and each of its `additional_bindings`). Methods without the option get no route.
Each method also carries the route policy its proto declares (`Rpc.policy`, read by
mesh/catalog.py from our method options: HTTP caching, the log-in's rate limit), checked here
against its HTTP rules.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from mesh.catalog import NO_POLICY, MethodPolicy, OptionError, method_policy

HTTP_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Rpc:
    """One unary gRPC method and the message classes it takes and returns."""

    service: str  # full proto name: capsule.auth.v1.AuthService
    name: str  # SignUp
    input_type: type[Message]
    output_type: type[Message]
    # What the method's proto declares for the gateway's policies (derived: not part of its identity).
    policy: MethodPolicy = field(default=NO_POLICY, compare=False)

    @property
    def path(self) -> str:
        """The gRPC method path: /capsule.auth.v1.AuthService/SignUp."""
        return f"/{self.service}/{self.name}"

    @property
    def input_descriptor(self) -> Descriptor:
        return self.input_type.DESCRIPTOR

    @property
    def output_descriptor(self) -> Descriptor:
        return self.output_type.DESCRIPTOR


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP rule of one method: `POST /v1/auth:signup` with body `*` → AuthService.SignUp."""

    rpc: Rpc
    verb: str  # upper case: GET, POST, ...
    template: str  # /v1/usernames/{username}
    body: str  # "" (no body), "*" (the whole message) or a top-level field name
    response_body: str  # "" (the whole response) or a top-level field name of the response
    index: int  # 0 for the main rule, 1.. for additional bindings


class DescriptorError(Exception):
    """A proto module or annotation the gateway cannot serve; raised at start-up, never later."""


def load_services(module_names: Iterable[str]) -> list[ServiceDescriptor]:
    services: list[ServiceDescriptor] = []
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DescriptorError(f"cannot import proto module {module_name!r}: {exc}") from exc
        file_descriptor = getattr(module, "DESCRIPTOR", None)
        if file_descriptor is None or not hasattr(file_descriptor, "services_by_name"):
            raise DescriptorError(f"{module_name!r} is not a generated *_pb2 module")
        services.extend(file_descriptor.services_by_name.values())
    return services


def http_bindings(services: Iterable[ServiceDescriptor]) -> list[HttpBinding]:
    bindings: list[HttpBinding] = []
    for service in services:
        for method in service.methods:
            if not method.GetOptions().HasExtension(annotations_pb2.http):
                continue
            if method.client_streaming or method.server_streaming:
                raise DescriptorError(f"{method.full_name}: streaming methods cannot be transcoded")
            try:
                policy = method_policy(method)
            except OptionError as exc:
                raise DescriptorError(str(exc)) from None
            rpc = Rpc(
                service=service.full_name,
                name=method.name,
                input_type=message_factory.GetMessageClass(method.input_type),
                output_type=message_factory.GetMessageClass(method.output_type),
                policy=policy,
            )
            own = [_binding(rpc, rule, index) for index, rule in enumerate(_rules(method))]
            _check_policy(rpc, own)
            bindings.extend(own)
    return bindings


def _check_policy(rpc: Rpc, bindings: list[HttpBinding]) -> None:
    """A declared policy the method's HTTP rules would silently ignore is a start-up error."""
    where = f"{rpc.service}.{rpc.name}"
    if rpc.policy.http_cache is not None and not any(b.verb == "GET" for b in bindings):
        raise DescriptorError(f"{where}: http_cache applies to GET answers, and no http rule of it is a GET")
    if rpc.policy.login is not None and any(b.body != "*" for b in bindings):
        raise DescriptorError(f'{where}: a log-in names its account in the JSON body: every http rule needs body "*"')


def _rules(method: MethodDescriptor) -> Iterator[http_pb2.HttpRule]:
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def _binding(rpc: Rpc, rule: http_pb2.HttpRule, index: int) -> HttpBinding:
    where = f"{rpc.service}.{rpc.name} (http rule {index})"
    pattern = rule.WhichOneof("pattern")
    if pattern in HTTP_VERBS:
        verb, template = pattern.upper(), getattr(rule, pattern)
    elif pattern == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        raise DescriptorError(f"{where}: no verb and path")
    if rule.body not in ("", "*") and rule.body not in rpc.input_descriptor.fields_by_name:
        raise DescriptorError(f"{where}: body {rule.body!r} is not a field of {rpc.input_descriptor.full_name}")
    if rule.response_body and rule.response_body not in rpc.output_descriptor.fields_by_name:
        raise DescriptorError(
            f"{where}: response_body {rule.response_body!r} is not a field of {rpc.output_descriptor.full_name}"
        )
    return HttpBinding(
        rpc=rpc, verb=verb, template=template, body=rule.body, response_body=rule.response_body, index=index
    )
