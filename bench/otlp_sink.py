"""An OTLP/gRPC trace receiver that accepts every export and keeps nothing, so the tracing bench
measures what exporting costs the mesh (serialising, sending) and not a collector's work.
`python -m bench.otlp_sink HOST:PORT` (prints READY when it listens; on SIGTERM prints the number
of exports and bytes received).

No generated stubs: a generic handler takes the request as bytes and answers an empty
ExportTraceServiceResponse (zero bytes on the wire)."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
import uvloop

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class Counts:
    exports = 0
    received = 0


async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    Counts.exports += 1
    Counts.received += len(request)
    return b""


async def main(listen: str) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(export)  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("READY", flush=True)
    await stop.wait()
    print(f"exports {Counts.exports} bytes {Counts.received}", flush=True)
    await server.stop(1)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
