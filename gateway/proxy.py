"""The endpoint of every transcoded route: HTTP request → gRPC call → HTTP response.

    route match (scope) → body (if the route takes one) → request message → metadata + deadline
    → upstream call → response JSON

Any step may raise a Problem, which becomes the problem+json answer. The success path writes
the ASGI messages directly: no Response object, no header re-encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from gateway.bodies import check_content_type, declared_length, parse_json, read_body
from gateway.clientip import ClientIpResolver
from gateway.middleware import REQUEST_ID_SCOPE_KEY
from gateway.problems import Problem
from gateway.routing import MATCH_SCOPE_KEY, Route, RouteMatch
from gateway.transcoding import NO_BODY, Transcoder
from gateway.upstream import Upstream, call_metadata

MAX_QUERY_PARAMETERS = 100
_JSON_HEADERS = [(b"content-type", b"application/json")]


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match: RouteMatch = scope[MATCH_SCOPE_KEY]
        transcoder = self.transcoders[match.route]
        headers = dict(scope["headers"])
        try:
            body = await self._body(transcoder, headers, receive)
            request = transcoder.request(match.raw_params, body, _query(scope["query_string"]))
            metadata = call_metadata(headers, scope[REQUEST_ID_SCOPE_KEY], self.client_ip.resolve(scope) or None)
            timeout = self.upstream.deadline(headers.get(b"grpc-timeout"))
            response = await self.upstream.call(match.route.binding.rpc, request, metadata, timeout)
            payload = transcoder.response_json(response)
        except Problem as problem:
            await problem.response()(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _body(self, transcoder: Transcoder, headers: dict[bytes, bytes], receive: Receive) -> object:
        """The parsed JSON body, or NO_BODY for a route without one (which must then be empty)."""
        length = declared_length(headers.get(b"content-length"), self.max_body_bytes)
        if not transcoder.takes_body:
            if length:
                raise Problem.invalid_body("This route takes no request body.")
            if length is None and b"transfer-encoding" in headers and await read_body(receive, self.max_body_bytes):
                raise Problem.invalid_body("This route takes no request body.")
            return NO_BODY
        raw = await read_body(receive, self.max_body_bytes) if length != 0 else b""
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
