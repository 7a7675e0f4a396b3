"""The route table: (HTTP verb, request path) → binding and path variables, or 404, or 405.

Built once from the bindings. Lookup splits the raw path into segments and the custom verb, then
tries only the templates of that shape (same verb suffix, same number of segments, plus the
open-ended `**` ones), most specific first (literal segments beat variables). Nothing is parsed
or compiled per request.

`TranscodedRoutes` plugs the table into Starlette's router as one route: a full match when a
template matches path and verb, a partial match (→ 405 with `Allow`) when only the path does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import URLPath
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.descriptors import DescriptorError, HttpBinding
from gateway.problems import Problem
from gateway.templates import PathTemplate, parse_template, split_request_path

# Where a matched route is left in the ASGI scope for the endpoint and for middleware
# (metrics label it by template; later: rate limiting and caching headers per route).
MATCH_SCOPE_KEY = "gateway.match"


@dataclass(frozen=True, eq=False)  # identity hash: a dict key on the hot path
class Route:
    binding: HttpBinding
    template: PathTemplate


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    raw_params: dict[str, str]  # field path → still percent-encoded text (see Variable.decode)


@dataclass(frozen=True)
class MethodNotAllowed:
    allowed: tuple[str, ...]


class RouteTable:
    def __init__(self, bindings: Iterable[HttpBinding]) -> None:
        self.routes: list[Route] = []
        self._fixed: dict[tuple[str, int], list[Route]] = defaultdict(list)
        self._open_ended: dict[str, list[Route]] = defaultdict(list)
        seen: dict[tuple[str, str], HttpBinding] = {}
        for binding in bindings:
            template = parse_template(binding.template)
            key = (binding.verb, template.shape)
            if key in seen:
                other = seen[key].rpc
                raise DescriptorError(
                    f"{binding.verb} {binding.template} is bound by both {other.service}.{other.name} "
                    f"and {binding.rpc.service}.{binding.rpc.name}"
                )
            seen[key] = binding
            route = Route(binding, template)
            self.routes.append(route)
            if template.open_ended:
                self._open_ended[template.verb].append(route)
            else:
                self._fixed[(template.verb, len(template.segments))].append(route)
        for routes in (*self._fixed.values(), *self._open_ended.values()):
            routes.sort(key=lambda r: r.template.specificity)  # stable: declaration order otherwise

    def resolve(self, method: str, raw_path: str) -> RouteMatch | MethodNotAllowed | None:
        segments, verb = split_request_path(raw_path)
        allowed: list[str] = []
        for candidates in (self._fixed.get((verb, len(segments)), ()), self._open_ended.get(verb, ())):
            for route in candidates:
                params = route.template.match(segments)
                if params is None:
                    continue
                if route.binding.verb == method:
                    return RouteMatch(route, params)
                if route.binding.verb not in allowed:
                    allowed.append(route.binding.verb)
        return MethodNotAllowed(tuple(sorted(allowed))) if allowed else None


class TranscodedRoutes(BaseRoute):
    """Every annotated method as one Starlette route; `app` serves the full matches."""

    def __init__(self, table: RouteTable, app: ASGIApp, middleware: Sequence[Middleware] = ()) -> None:
        self.table = table
        # Route-level middleware runs after routing, so it sees MATCH_SCOPE_KEY: the seam for
        # per-route policies (rate limits, caching headers) that only concern transcoded calls.
        for cls, args, kwargs in reversed(middleware):
            app = cls(app, *args, **kwargs)
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        result = self.table.resolve(scope["method"], _raw_path(scope))
        if result is None:
            return Match.NONE, {}
        if isinstance(result, MethodNotAllowed):
            return Match.PARTIAL, {MATCH_SCOPE_KEY: result}
        return Match.FULL, {MATCH_SCOPE_KEY: result}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        result = scope[MATCH_SCOPE_KEY]
        if isinstance(result, MethodNotAllowed):
            problem = Problem.method_not_allowed(scope["method"], result.allowed)
            await problem.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)


def _raw_path(scope: Scope) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return str(scope["path"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
