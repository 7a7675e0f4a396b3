"""Server reflection that describes what the caller may see (SPEC §12).

Envoy routes reflection to one service's instances, and each describes the whole mesh (mesh/catalog
.py), so `grpcurl list` through Envoy shows every service. Two views, chosen per call from the
caller's certificate (mesh/credentials.caller_workload):
- operators: every service of the catalog, internal ones included (RelationshipService);
- everyone else with a mesh certificate: the public services, those with a method the gateway may
  call.

Each view answers from a descriptor pool of its own that holds only its services' files and their
imports. The process's default pool also holds what it imported for its own use — the control
plane's registry API among them — and the stock servicer would describe any symbol found there to
anyone who asked by name.

In plain text (MESH_PLAINTEXT=1, no identities) everyone gets the operators' view.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from mesh.catalog import public_to
from mesh.credentials import caller_workload
from mesh.pki import GATEWAY, OPERATOR

# What every instance serves besides its API, shown in both views.
_ALWAYS = (
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
# The error details every error status carries (services/common/errors.py): grpcurl looks their
# types up by name to print them.
_DETAIL_FILES = (error_details_pb2.DESCRIPTOR,)


def _pool_of(services: Iterable[ServiceDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool holding the files that define `services` and everything they import."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in _DETAIL_FILES:
        add(file)
    for service in services:
        add(service.file)
    return pool


def _servicer(services: list[ServiceDescriptor]) -> ReflectionServicer:
    return ReflectionServicer([s.full_name for s in services], pool=_pool_of(services))


class CallerReflection(reflection_pb2_grpc.ServerReflectionServicer):
    def __init__(self, services: Iterable[ServiceDescriptor], *, identities: bool) -> None:
        everything = list(dict.fromkeys([*services, *_ALWAYS]))
        self._operators = _servicer(everything)
        self._public = _servicer([s for s in everything if s in _ALWAYS or public_to(GATEWAY, s)])
        self._identities = identities

    async def ServerReflectionInfo(  # type: ignore[override]
        self, request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        operator = not self._identities or caller_workload(context) == OPERATOR
        view = self._operators if operator else self._public
        async for response in view.ServerReflectionInfo(request_iterator, context):
            yield response


def add_reflection(server: grpc.aio.Server, services: Iterable[ServiceDescriptor], *, identities: bool) -> None:
    """Serve reflection on `server` over `services` (see the module doc); `identities`: whether
    callers present certificates (mutual TLS), else everyone sees everything."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        CallerReflection(services, identities=identities), server
    )
