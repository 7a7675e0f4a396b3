"""The client's IP address, as the rate limiter keys it and as it is forwarded upstream.

The rule (the socket peer, or `X-Forwarded-For` read from the right behind one of
GATEWAY_TRUSTED_PROXIES; IPv6 keyed by its /64) is services/common/addresses.py, which the auth
service's log-in limits share; this module applies it to an ASGI scope. (uvicorn's own
X-Forwarded-For handling is off, see `gateway.__main__`: the header is interpreted there only.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from starlette.types import Scope

from services.common.addresses import IpNetwork, client_address

CLIENT_IP_SCOPE_KEY = "gateway.client_ip"


class ClientIpResolver:
    def __init__(self, trusted_proxies: Sequence[IpNetwork] = ()) -> None:
        self.trusted = tuple(trusted_proxies)

    def resolve(self, scope: Scope) -> str:
        """The client's address (text, as forwarded upstream); cached in the scope."""
        cached = scope.get(CLIENT_IP_SCOPE_KEY)
        if cached is not None:
            return str(cached)
        client = scope.get("client")
        peer = client[0] if client else ""
        address = client_address(peer, _forwarded_for(scope["headers"]) if self.trusted else (), self.trusted)
        scope[CLIENT_IP_SCOPE_KEY] = address
        return address


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            hops.extend(part.strip() for part in value.decode("latin-1").split(","))
    return hops
