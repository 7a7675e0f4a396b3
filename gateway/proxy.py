"""The endpoint of every transcoded route: HTTP request → gRPC call → reply.

    route match → body (if the route takes one) → request message → metadata + deadline
    → upstream call → response JSON

Any step may raise a Problem, which becomes the problem+json reply (gateway/calls.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

from gateway.bodies import check_content_type, declared_length, parse_json
from gateway.calls import Call, Reply
from gateway.clientip import ClientIpResolver
from gateway.problems import Problem
from gateway.routing import Route
from gateway.transcoding import NO_BODY, Transcoder
from gateway.upstream import Upstream, call_metadata

MAX_QUERY_PARAMETERS = 100
_JSON = b"application/json"


class Proxy:
    def __init__(
        self,
        routes: Iterable[Route],
        upstream: Upstream,
        max_body_bytes: int,
        client_ip: ClientIpResolver | None = None,
    ) -> None:
        self.transcoders = {route: Transcoder(route.binding, route.template) for route in routes}
        self.upstream = upstream
        self.max_body_bytes = max_body_bytes
        self.client_ip = client_ip or ClientIpResolver()

    async def __call__(self, call: Call) -> Reply:
        match = call.match
        transcoder = self.transcoders[match.route]
        headers = call.headers
        body = await self._body(transcoder, call)
        request = transcoder.request(match.raw_params, body, _query(call.scope["query_string"]))
        metadata = call_metadata(headers, call.request_id.decode(), self.client_ip.resolve(call.scope) or None)
        timeout = self.upstream.deadline(headers.get(b"grpc-timeout"))
        response = await self.upstream.call(match.route.binding.rpc, request, metadata, timeout)
        return Reply(200, [(b"content-type", _JSON)], transcoder.response_json(response))

    async def _body(self, transcoder: Transcoder, call: Call) -> object:
        """The parsed JSON body, or NO_BODY for a route without one (which must then be empty)."""
        headers = call.headers
        length = declared_length(headers.get(b"content-length"), self.max_body_bytes)
        if not transcoder.takes_body:
            if length:
                raise Problem.invalid_body("This route takes no request body.")
            if length is None and b"transfer-encoding" in headers and await call.body(self.max_body_bytes):
                raise Problem.invalid_body("This route takes no request body.")
            return NO_BODY
        raw = await call.body(self.max_body_bytes) if length != 0 else b""
        if raw:
            check_content_type(headers.get(b"content-type"))
        return parse_json(raw)


def _query(query_string: bytes) -> list[tuple[str, str]]:
    if not query_string:
        return []
    try:
        return parse_qsl(
            query_string.decode("latin-1"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=MAX_QUERY_PARAMETERS,
        )
    except UnicodeDecodeError:
        raise Problem(400, "INVALID_QUERY", "The query string is not valid UTF-8 once percent-decoded.") from None
    except ValueError:
        raise Problem(
            400, "INVALID_QUERY", f"The query string has more than {MAX_QUERY_PARAMETERS} parameters."
        ) from None
