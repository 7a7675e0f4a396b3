"""The client's IP address, as the rate limiter keys it and as it is forwarded upstream.

The address is the socket peer's, unless that peer is one of GATEWAY_TRUSTED_PROXIES (CIDRs,
default none): then `X-Forwarded-For` is read from the right, skipping the trusted hops, and the
first address that is not a trusted proxy is the client. Everything to the left of it was written
by that client and is ignored, so a client cannot pick its own key by sending the header: an
untrusted peer's header is never read at all. (uvicorn's own X-Forwarded-For handling is off, see
`gateway.__main__`: this module is the only place the header is interpreted.)

IPv6 clients are keyed by their /64: one subscriber usually holds a whole /64 and could otherwise
rotate through 2^64 addresses to get a fresh budget each time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLIENT_IP_SCOPE_KEY = "gateway.client_ip"


def parse_networks(raw: str) -> tuple[IpNetwork, ...]:
    """`10.0.0.0/8, 192.168.1.7` → networks (a bare address is a /32 or /128)."""
    networks: list[IpNetwork] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SystemExit(f"setting GATEWAY_TRUSTED_PROXIES: {item!r} is not an address or CIDR") from None
    return tuple(networks)


class ClientIpResolver:
    def __init__(self, trusted_proxies: Sequence[IpNetwork] = ()) -> None:
        self.trusted = tuple(trusted_proxies)

    def _is_trusted(self, address: IpAddress) -> bool:
        return any(address in network for network in self.trusted)

    def resolve(self, scope: Scope) -> str:
        """The client's address (text, as forwarded upstream); cached in the scope."""
        cached = scope.get(CLIENT_IP_SCOPE_KEY)
        if cached is not None:
            return str(cached)
        client = scope.get("client")
        peer_text = client[0] if client else ""
        address = peer_text
        peer = _parse(peer_text) if self.trusted else None  # parsed only when it may be a proxy
        if peer is not None and self._is_trusted(peer):
            forwarded = _forwarded_for(scope["headers"])
            address = self._from_forwarded(forwarded) or peer_text
        scope[CLIENT_IP_SCOPE_KEY] = address
        return address

    def _from_forwarded(self, hops: Sequence[str]) -> str | None:
        """Right to left: the first hop that is not a trusted proxy. An unparsable hop ends the
        walk (whatever is left of a trusted proxy's own entry is the client's to forge)."""
        last_trusted: str | None = None
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                return last_trusted
            if not self._is_trusted(address):
                return address.compressed
            last_trusted = address.compressed
        return last_trusted


def rate_limit_key(address: str) -> str:
    """The limiter's key of an address: itself for IPv4, its /64 for IPv6."""
    parsed = _parse(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return parsed.ipv4_mapped.compressed
        return ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)).compressed
    return parsed.compressed if parsed is not None else address or "unknown"


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            hops.extend(part.strip() for part in value.decode("latin-1").split(","))
    return hops


def _parse(text: str) -> IpAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
