"""Protocol limits of the HTTP server (SPEC §7): what a client may hold before its request is an ASGI call.

uvicorn's httptools protocol, subclassed (`limited_protocol(limits)` → the class given to uvicorn
as `http=`), adds what uvicorn lacks:
- a cap on open connections per gateway process (GATEWAY_MAX_CONNECTIONS): a connection past it is
  answered 503 and closed at once, before anything is read, so the process never holds more than
  the cap (uvicorn's own `limit_concurrency` only answers after a whole request head arrived, so
  slow clients past it would still be held);
- a request-head deadline (GATEWAY_HEADER_TIMEOUT_SECONDS, 10 s): armed when a connection opens and
  when the first bytes of a later request arrive, disarmed when its head is complete. A head not
  complete in time is answered 408 (if any of it came) and the connection closed. uvicorn has no
  such timer: its keep-alive timer runs only between requests and any byte disarms it;
- head size and header count (GATEWAY_MAX_HEADER_BYTES, 16 KiB; GATEWAY_MAX_HEADERS, 100): 431.
  The size is counted as the parser hands the head over: the request target plus, per header,
  name + value + 4 (": " and CRLF). The parser buffers one header line whole before it hands it
  over, so bytes received while a head is still incomplete are counted too, and more than the
  limit plus HEAD_SLACK_BYTES of them (the request line and whitespace the first count leaves out)
  is the same 431: an endless header line never grows memory past that.
Idle keep-alive connections are closed by uvicorn itself (`timeout_keep_alive`, set from
GATEWAY_KEEPALIVE_TIMEOUT_SECONDS by __main__.py).

A subclass rather than an ASGI middleware: ASGI only sees a request once its head is complete,
which is too late for all of the above. httptools stays the parser (the gateway's hot path); each
check is a few integer operations per header.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
from prometheus_client import Counter, Gauge
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.problems import Problem

HEAD_SLACK_BYTES = 1024

# The default cap, from a memory budget per gateway process and the measured cost of one held
# connection (issue 15; `python -m bench.held_connections`, README "Gateway protocol limits"):
# an idle kept-alive HTTP/1.1 connection, answered once, adds 10.0 KiB to the gateway's RSS
# (10,000 held: 79,796 → 180,132 KiB; 10.0-10.1 KiB over four runs, 9.8 KiB with 13,000), and
# a steady GET /v1/me load keeps its latency with them held (p50 and p99 within the spread of the
# runs without them on the 2 shared cores). The memory stays after they close: the cap bounds the
# high mark. Budget: 128 MiB of connections per process, beside its own ~80 MiB. 128 MiB /
# 10.0 KiB = 13,107, rounded down to 13,000 (measured at 13,000: +125 MiB). 1M held connections
# then take about 77 gateway processes. The kernel's socket memory is not in that RSS, and the
# process needs an open-file limit above the cap (GATEWAY_MAX_CONNECTIONS).
DEFAULT_MAX_CONNECTIONS = 13_000

OPEN = Gauge("gateway_http_connections", "HTTP connections open in this gateway process")
CAP = Gauge("gateway_http_connections_max", "Most HTTP connections this gateway process holds at once")
REFUSED = Counter(
    "gateway_http_connections_refused_total",
    "Connections answered and closed by a protocol limit",
    ["reason"],  # connection_limit, header_timeout, headers_too_large, too_many_headers
)


@dataclass(frozen=True)
class ProtocolLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0


class _Refused(Exception):
    """Raised from a parser callback: the head broke a limit (the problem is kept on the protocol)."""


def limited_protocol(limits: ProtocolLimits) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http=` with `limits` (and the cap published as a metric)."""
    CAP.set(limits.max_connections)

    class Protocol(LimitedHttpToolsProtocol):
        pass

    Protocol.limits = limits
    return Protocol


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ProtocolLimits] = ProtocolLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._over_cap = False
        self._refusal: tuple[Problem, str] | None = None
        self._head_timer: TimerHandle | None = None
        self._reading_head = True  # the next bytes belong to a request head
        self._raw_head_bytes = 0  # received while the current head is incomplete (an upper bound)
        self._head_bytes = 0  # the current head as counted from the parser's callbacks
        self._header_count = 0

    # Connection.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._over_cap = True
            REFUSED.labels("connection_limit").inc()
            problem = Problem(503, "TOO_MANY_CONNECTIONS", "The server holds too many connections; retry shortly.")
            transport.write(_raw_response(problem))
            transport.close()
            return
        super().connection_made(transport)
        OPEN.set(len(self.connections))
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._over_cap:
            return  # never served: uvicorn's state was not touched
        self._disarm_head_timer()
        super().connection_lost(exc)
        OPEN.set(len(self.connections))

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if self._reading_head:
            self._raw_head_bytes += len(data)
            self._arm_head_timer()  # also after a keep-alive pause: uvicorn's timer stops at the first byte
        # uvicorn's data_received, except that a _Refused raised by a callback below is no
        # malformed request (uvicorn would log one and answer 400).
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is None:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
                return
        unfinished = self._raw_head_bytes if self._reading_head else 0
        if self._refusal is None and unfinished > self.limits.max_header_bytes + HEAD_SLACK_BYTES:
            self._refuse_too_large()
        if self._refusal is not None and not self.transport.is_closing():
            self._answer_and_close(*self._refusal)

    # Parser callbacks.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse_too_large()
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse_too_large()
            raise _Refused
        if self._header_count > self.limits.max_headers:
            self._refusal = (
                Problem(431, "TOO_MANY_HEADERS", f"The request has more than {self.limits.max_headers} headers."),
                "too_many_headers",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._reading_head = False
        self._raw_head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True

    # Limits.

    def _refuse_too_large(self) -> None:
        limit = self.limits.max_header_bytes
        self._refusal = (
            Problem(431, "HEADERS_TOO_LARGE", f"The request headers are larger than {limit} bytes in total."),
            "headers_too_large",
        )

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._raw_head_bytes:  # nothing to answer: a connection that never said anything
            REFUSED.labels("header_timeout").inc()
            self.transport.close()
            return
        seconds = f"{self.limits.header_timeout_seconds:g}"
        self._refusal = (
            Problem(408, "REQUEST_TIMEOUT", f"The request head did not arrive within {seconds} s."),
            "header_timeout",
        )
        self._answer_and_close(*self._refusal)

    def _answer_and_close(self, problem: Problem, reason: str) -> None:
        REFUSED.labels(reason).inc()
        self._disarm_head_timer()
        # A head pipelined behind a response still being written ends the connection unanswered:
        # an answer now would land in the middle of that response.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_raw_response(problem))
        self.transport.close()


def _raw_response(problem: Problem) -> bytes:
    """A whole HTTP/1.1 response that ends the connection (written before any ASGI call exists)."""
    body = problem.body()
    head = [f"HTTP/1.1 {problem.status} {HTTPStatus(problem.status).phrase}".encode()]
    head += [b"%s: %s" % header for header in problem.raw_headers()]
    head += [b"content-length: %d" % len(body), b"connection: close", b"", b""]
    return b"\r\n".join(head) + body
