"""The route table: (HTTP verb, request path) → binding and path variables, or 404, or 405.

Built once from the bindings. Lookup splits the raw path into segments and the custom verb, then
tries only the templates of that shape (same verb suffix, same number of segments, plus the
open-ended `**` ones), most specific first (literal segments beat variables). Nothing is parsed
or compiled per request.

The gateway (app.py) asks the table first: a full match is a transcoded call, a path that matches
with another verb is 405 with `Allow`, anything else goes to the operational routes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Scope

from gateway.descriptors import DescriptorError, HttpBinding
from gateway.templates import PathTemplate, parse_template, split_request_path


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


def raw_path(scope: Scope) -> str:
    """The request path as the client sent it (still percent-encoded), for matching."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return str(scope["path"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
